/* A C extension for the benchmarks: churn(n) makes n malloc/free pairs of varying sizes from a
   Python call, through two native frames, the way an extension's inner loop allocates. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

__attribute__((noinline)) static void *make_buffer(size_t size) {
    char *buffer = malloc(size);
    if (buffer) buffer[0] = (char)size;
    return buffer;
}

__attribute__((noinline)) static long churn_once(long i) {
    void *buffer = make_buffer(16 + (size_t)(i % 64) * 8);
    long sum = buffer ? ((char *)buffer)[0] : 0;
    free(buffer);
    return sum;
}

static PyObject *churn(PyObject *self, PyObject *args) {
    long n;
    if (!PyArg_ParseTuple(args, "l", &n)) return NULL;
    long total = 0;
    for (long i = 0; i < n; i++) total += churn_once(i);
    return PyLong_FromLong(total);
}

static PyMethodDef methods[] = {{"churn", churn, METH_VARARGS, "n malloc/free pairs"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "churn_ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_churn_ext(void) { return PyModule_Create(&module); }
