"""A multiprocessing pool that replaces its workers after every task (maxtasksperchild=1):
the parent forks a fresh worker for each of 40 small tasks, four at a time.

    python pool.py [TASKS]
"""
import multiprocessing
import sys


def task(n):
    # A little work of the worker's own: objects made and dropped.
    table = {i: str(i) * 3 for i in range(2000 + n)}
    return sum(len(v) for v in table.values())


def main():
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    context = multiprocessing.get_context("fork")
    with context.Pool(4, maxtasksperchild=1) as pool:
        print(sum(pool.map(task, range(tasks), chunksize=1)))


if __name__ == "__main__":
    main()
