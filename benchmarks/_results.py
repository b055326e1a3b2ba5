"""Where benchmark scripts write their tables."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write_result(name: str, lines: list) -> str:
    """Write a markdown table to benchmarks/results/NAME and print its path."""
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(path)
    return path
