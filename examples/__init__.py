"""Examples of asyncjobs in use; `nox -s demo` runs examples/demo.py."""
