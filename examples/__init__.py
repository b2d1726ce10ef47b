"""Examples of asyncjobs in use: `examples/provisioning`, which `nox -s demo` runs and narrates."""
