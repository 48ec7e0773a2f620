"""kubensctl: Kubernetes mount namespace encapsulation for systemd nodes.

The package root stays import-light: ``kubensenter`` imports ``kubensctl.enter`` through it on every
invocation, so nothing heavy is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "join"]


def join(path: "str | None" = None) -> "str | None":
    """Join the Kubernetes mount namespace named by ``path`` or ``$KUBENSMNT``.

    Call it at program start-up, before any thread starts (setns(2) refuses CLONE_NEWNS in a
    multithreaded process). Returns the joined path, or None when there was nothing to join.
    """
    from kubensctl.namespace import join as _join

    return _join(path)
