from __future__ import annotations

import types

import asyncjobs


def test_all_is_sorted_and_names_only_real_public_members() -> None:
    assert asyncjobs.__all__ == sorted(asyncjobs.__all__)
    for name in asyncjobs.__all__:
        assert hasattr(asyncjobs, name), name
    # `annotations` is the `from __future__ import annotations` feature object.
    public = {n for n in dir(asyncjobs) if not n.startswith("_")} - {"annotations"}
    submodules = {n for n in public if isinstance(getattr(asyncjobs, n), types.ModuleType)}
    assert public - submodules - set(asyncjobs.__all__) == set()


def test_every_error_derives_from_the_one_root() -> None:
    errors = [getattr(asyncjobs, n) for n in asyncjobs.__all__ if n.endswith("Error")]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, asyncjobs.AsyncJobsError)
        assert str(error()), f"{error.__name__} has no default message"
