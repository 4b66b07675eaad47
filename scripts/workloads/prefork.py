"""A prefork server's shape: the parent builds a large heap (about 100 MB of small dicts,
lists and strings: configuration, caches, a loaded model), then forks 16 children that each
handle requests and leave with os._exit, as gunicorn's and uWSGI's workers do.

    python prefork.py [CHILDREN] [REQUESTS]
"""
import os
import sys


def handle(request, heap):
    # A request reads the shared heap and builds a small response of its own.
    entry = heap[request % len(heap)]
    return len(str({"id": request, "name": entry["name"], "tags": entry["tags"][:3]}))


def main():
    children = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    heap = [{"name": f"item-{i}", "tags": [f"t{i % 97}", f"u{i % 89}", f"v{i % 83}", f"w{i}"], "value": i * 0.5}
            for i in range(250_000)]
    pids = []
    for child in range(children):
        pid = os.fork()
        if pid == 0:
            total = sum(handle(request + child, heap) for request in range(requests))
            os.write(1, b"")  # nothing printed per child: the parent prints the total
            os._exit(0 if total > 0 else 1)
        pids.append(pid)
    failures = sum(os.waitpid(pid, 0)[1] != 0 for pid in pids)
    print(f"{children} children, {failures} failed, heap of {len(heap)} entries")


if __name__ == "__main__":
    main()
