"""The benchmark (`python -m bench`): the figures of docs/performance.md."""
