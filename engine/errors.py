"""Errors a user can act on.

Everything raised as a ``SaejobsError`` is shown by the CLI as one line on stderr, without a
traceback, with ``exit_code`` as the process status. Anything else is a bug and keeps its traceback.
"""


class SaejobsError(Exception):
    exit_code = 1


class UsageError(SaejobsError):
    """The request itself is wrong (unknown id, bad argument)."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named thing (SAE id, job, file) does not exist."""


class FormatError(SaejobsError):
    """A file from outside does not have the layout its format requires."""

    exit_code = 3


class IntegrityError(SaejobsError):
    """Bytes on disk differ from what they should be (checksum, non-finite values)."""

    exit_code = 3


class StorageError(SaejobsError):
    """This host's disk refuses the write (full, read-only, not permitted): another attempt here cannot help,
    so the job fails at once instead of passing from worker to worker."""

    exit_code = 7


class DiskFullError(StorageError):
    """The disk filled up while writing; the partial file is deleted (it would only hold the space)."""


class OutOfMemory(SaejobsError):
    """One row does not fit in the device's memory: retrying on the same kind of device cannot help."""

    exit_code = 7


class TransientError(SaejobsError):
    """Worth retrying as is: a connection dropped, a server answered 5xx, the database was busy."""

    exit_code = 5
