"""The benchmark (`python -m bench`): figures of the README's Performance section."""
