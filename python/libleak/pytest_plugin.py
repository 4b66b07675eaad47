"""The pytest plugin: which test leaked, with the C line and the Python line that did it.

Two halves. Inside a traced pytest (under `libleak run -- pytest …`, or the child that
`pytest --libleak` starts), each test's start and end are marked in the trace
(`test-start <nodeid>`, `test-end <nodeid>`, around setup, call and teardown), and the
reporter gives every leak row the tests during which its blocks were allocated (the row's
`tests` in the JSON report). `pytest --libleak` itself starts that traced pytest (same
arguments) through the packaged `libleak run --json`, reads the report when it has ended,
prints which tests leaked what, and with `--libleak-fail-on-leak` fails the run when a leak
belongs to a test.

Must never run Python code inside libleak's allocator hooks (the marks are ctypes calls made
from pytest hooks), never change a test's own outcome (a leak fails the run at its end, since
leaks are only known once the traced process has exited and been scanned), and never start a
traced pytest from inside one (`LIBLEAK_PYTEST_CHILD` guards against that).
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

import libleak

# Set in the traced pytest that `pytest --libleak` starts.
CHILD_ENV = "LIBLEAK_PYTEST_CHILD"

# Rows of these classes are leaks for `--libleak-fail-on-leak`, as for `libleak
# --fail-on-leak`: possibly lost blocks (a pointer into their middle survives) are not.
LEAK_KINDS = ("definitely-lost", "indirectly-lost", "unclassified")

# Exit status of a run that passed but leaked under --libleak-fail-on-leak: pytest's own
# "tests failed", since a leaking test is a failing one.
LEAKED_EXIT_STATUS = 1

OWN_FLAGS = ("--libleak", "--libleak-fail-on-leak")
OWN_VALUE_FLAGS = ("--libleak-output",)


def pytest_addoption(parser):
    group = parser.getgroup("libleak", "memory leaks by test (libleak)")
    group.addoption(
        "--libleak",
        action="store_true",
        default=False,
        help="run the tests under libleak and name the tests that leaked (C and Python lines)",
    )
    group.addoption(
        "--libleak-fail-on-leak",
        action="store_true",
        default=False,
        help="with --libleak: fail the run when a leak was allocated during a test",
    )
    group.addoption(
        "--libleak-output",
        metavar="PATH",
        default=None,
        help="with --libleak: where the trace goes (libleak run --output; default "
        "libleak.<program>.<pid>.trace in the current directory)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    if not config.getoption("libleak") or os.environ.get(CHILD_ENV):
        return None
    if config.getoption("help", False) or config.getoption("version", False):
        return None
    return _run_traced(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Only under libleak (`marking()` is False otherwise); the labels are the reporter's
    # `tests_of` contract.
    traced = libleak.marking()
    if traced:
        libleak.mark("test-start " + item.nodeid)
    yield
    if traced:
        libleak.mark("test-end " + item.nodeid)


def _child_args(args):
    """The command line without this plugin's `--libleak*` flags (the child marks tests
    whatever its flags; the parent reports)."""
    kept = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        if arg in OWN_FLAGS:
            continue
        if arg in OWN_VALUE_FLAGS:
            skip_value = True
            continue
        if any(arg.startswith(flag + "=") for flag in OWN_VALUE_FLAGS):
            continue
        kept.append(arg)
    return kept


def _run_traced(config):
    """Runs the same pytest under `libleak run`, then reports; returns the exit status."""
    params = config.invocation_params
    try:
        program = libleak.binary()
    except FileNotFoundError as error:
        raise pytest.UsageError(f"--libleak: {error}") from error
    handle, report_path = tempfile.mkstemp(prefix="libleak-pytest.", suffix=".json")
    os.close(handle)
    command = [program, "run", "--json", "--limit", "0", "--report-file", report_path]
    output = config.getoption("libleak_output")
    if output:
        command += ["--output", output]
    command += ["--", sys.executable, "-m", "pytest", *_child_args(list(params.args))]
    env = dict(os.environ, **{CHILD_ENV: "1"})
    try:
        child = subprocess.Popen(command, cwd=str(params.dir), env=env)
        status = _wait(child)
        reports = _read_reports(report_path)
    finally:
        try:
            os.unlink(report_path)
        except OSError:
            pass
    if reports is None:
        sys.stderr.write(f"libleak: no report was written by `{' '.join(command[:2])}` (exit status {status})\n")
        return status or 2
    leaking = _print_summary(reports)
    if leaking and config.getoption("libleak_fail_on_leak") and status == 0:
        print(
            f"libleak: FAILED: {len(leaking)} {'test' if len(leaking) == 1 else 'tests'} leaked "
            f"(--libleak-fail-on-leak): {', '.join(leaking)}",
            flush=True,
        )
        return LEAKED_EXIT_STATUS
    return status


def _wait(child):
    """The child's exit status. Ctrl-C reaches the child too (same process group), and
    `libleak run` reports anyway: keep waiting for that report rather than abandon it."""
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def _read_reports(path):
    """The per-process reports in the JSON `libleak run` wrote, or None if it wrote none."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    if not text.strip():
        return None
    document = json.loads(text)
    if document.get("format") == "libleak-reports":
        return document.get("processes", [])
    return [document]


def _thousands(number):
    return f"{number:,}"


def _amount(bytes_, blocks):
    return f"{_thousands(bytes_)} bytes in {_thousands(blocks)} {'block' if blocks == 1 else 'blocks'}"


def _frame_text(function, file, line):
    where = f" at {file}:{line}" if file and line is not None else (f" in {file}" if file else "")
    return f"{function or '??'}{where}"


def _row_text(row):
    """A leak row in one line: its class and size, owner C function file:line and the
    Python line that called it."""
    owner = row.get("owner") or {}
    frames = row.get("frames") or []
    if owner.get("function"):
        site = _frame_text(owner["function"], owner.get("file"), owner.get("line"))
    elif frames:
        site = _frame_text(frames[0].get("function"), frames[0].get("file"), frames[0].get("line"))
    else:
        site = "(no stack)"
    python = owner.get("python")
    called = ""
    if python:
        called = ", called from " + _frame_text(python.get("function"), python.get("file"), python.get("line"))
    return f"{row['kind']}, {_amount(row['bytes'], row['blocks'])}: {site}{called}"


def _print_summary(reports):
    """Prints the leaks of each test; returns the node ids of the tests that leaked."""
    by_test = {}
    traces = []
    for report in reports:
        traces.append(report.get("trace"))
        for row in report.get("leaks", []):
            if row.get("kind") not in LEAK_KINDS or row.get("runtime_leftover"):
                continue
            for share in row.get("tests") or []:
                by_test.setdefault(share["nodeid"], []).append((share, row))
    title = " libleak: leaks by test "
    print("\n" + title.center(78, "="), flush=False)
    if not by_test:
        print("no leak was allocated during a test")
    for nodeid, rows in by_test.items():
        total = sum(share["bytes"] for share, _ in rows)
        blocks = sum(share["blocks"] for share, _ in rows)
        print(f"{nodeid} leaked {_amount(total, blocks)}:")
        for share, row in rows:
            print(f"  {_row_text(row)}")
            if (share["bytes"], share["blocks"]) != (row["bytes"], row["blocks"]):
                print(f"    of which {_amount(share['bytes'], share['blocks'])} during this test")
    traces = [trace for trace in traces if trace]
    if len(traces) == 1:
        print(f"libleak: trace {traces[0]} (`libleak report {traces[0]}` for the full report)")
    elif traces:
        # pytest-xdist: a trace per worker, and the controller's.
        print(f"libleak: traces {', '.join(traces)} (`libleak report TRACE…` for the full reports)")
    sys.stdout.flush()
    return list(by_test)
