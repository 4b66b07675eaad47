"""An allocation-heavy pure-Python workload: objects, list/dict/str churn, JSON round trips,
sorts with key functions. Deterministic; about a second plain on the reference machine."""
import json
import sys


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y
        self.label = f"p{x}-{y}"


def churn(rounds):
    total = 0
    for r in range(rounds):
        points = [Point(i, r) for i in range(2000)]
        index = {p.label: p for p in points}
        records = [{"id": i, "name": p.label, "tags": [p.x, p.y, str(p.x)]} for i, p in enumerate(points[:500])]
        decoded = json.loads(json.dumps(records))
        decoded.sort(key=lambda d: d["name"])
        total += len(index) + len(decoded) + sum(len(d["tags"]) for d in decoded)
    return total


if __name__ == "__main__":
    print(churn(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
