"""The smallest useful asyncjobs app: two jobs, enqueued from async code."""
