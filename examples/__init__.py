"""The examples the README and docs/ use, run by tests/test_examples.py."""
