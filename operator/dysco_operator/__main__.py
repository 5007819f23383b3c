"""Entry point of the operator."""


def main() -> int:
    return 0
