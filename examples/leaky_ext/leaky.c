/* A small C extension with three planted leaks, driven by app.py:
 *  - parse_records() mallocs a scratch buffer per record and never frees it;
 *  - make_label() copies a name into a buffer (in copy_label) that nothing frees;
 *  - index_labels() returns a dict (by label and by position) with one reference too many,
 *    so the dict and everything in it (its table, a list per label, the labels, the lengths)
 *    is never freed.
 * checksum() allocates too, but correctly frees, and must not be reported. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

static PyObject *parse_records(PyObject *self, PyObject *args) {
    Py_ssize_t count, size;
    if (!PyArg_ParseTuple(args, "nn", &count, &size)) return NULL;
    long total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned char *scratch = malloc((size_t)size); /* @leaky_scratch */
        if (!scratch) return PyErr_NoMemory();
        memset(scratch, (int)(i & 0x7f), (size_t)size);
        total += scratch[size - 1];
        /* the bug: scratch is never freed */
    }
    return PyLong_FromLong(total);
}

__attribute__((noinline)) static char *copy_label(const char *name) {
    char *label = calloc(1, 32); /* @leaky_label */
    if (label) strncpy(label, name, 31);
    return label;
}

static PyObject *make_label(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    char *label = copy_label(name);
    if (!label) return PyErr_NoMemory();
    return PyUnicode_FromString(label); /* @leaky_string the bug: label is never freed */
}

static PyObject *index_labels(PyObject *self, PyObject *labels) {
    PyObject *index = PyDict_New(); /* @leaky_index */
    if (!index) return NULL;
    Py_ssize_t count = PyList_Size(labels);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *label = PyList_GetItem(labels, i);
        PyObject *entry = PyList_New(2); /* @leaky_entry */
        if (!label || !entry) return NULL;
        Py_INCREF(label);
        PyList_SET_ITEM(entry, 0, label);
        PyList_SET_ITEM(entry, 1, PyLong_FromSsize_t(1000 * PyUnicode_GetLength(label)));
        PyDict_SetItem(index, label, entry);
        Py_DECREF(entry);
        PyObject *position = PyLong_FromSsize_t(i);
        PyDict_SetItem(index, position, label);
        Py_DECREF(position);
    }
    Py_INCREF(index); /* the bug: a reference never given back */
    return index;
}

static PyObject *checksum(PyObject *self, PyObject *args) {
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "n", &size)) return NULL;
    unsigned char *buffer = malloc((size_t)size);
    if (!buffer) return PyErr_NoMemory();
    long sum = 0;
    for (Py_ssize_t i = 0; i < size; i++) sum += (buffer[i] = (unsigned char)i);
    free(buffer);
    return PyLong_FromLong(sum);
}

static PyMethodDef methods[] = {
    {"parse_records", parse_records, METH_VARARGS, "Parse COUNT records of SIZE bytes (leaks)."},
    {"make_label", make_label, METH_VARARGS, "Make a label from a name (leaks)."},
    {"index_labels", index_labels, METH_O, "Index a list of labels (leaks the index)."},
    {"checksum", checksum, METH_VARARGS, "Sum a scratch buffer (frees correctly)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "leaky", NULL, -1, methods};

PyMODINIT_FUNC PyInit_leaky(void) { return PyModule_Create(&module); }
