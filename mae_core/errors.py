"""One exception class per kind of user error, each message saying what was expected and what to do.

All derive from `MAETransferError`, so a command-line front end can print them without a
traceback while genuine bugs still raise loudly.
"""


class MAETransferError(Exception):
    """Base class of errors caused by what the user handed us (files, folders, options)."""


class CheckpointFormatError(MAETransferError):
    """A checkpoint file that cannot be read, or whose format we do not know."""


class ArchitectureMismatchError(MAETransferError):
    """A checkpoint (or tensor) whose architecture differs from the model it is loaded into."""


class ImageSizeError(MAETransferError):
    """An input whose spatial size or channel count does not match the model."""


class DatasetLayoutError(MAETransferError):
    """A dataset folder that is missing, empty, or not in the expected on-disk layout."""


class CorruptImageError(MAETransferError):
    """A file in a dataset that is not a readable image."""


class NonFiniteLossError(MAETransferError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class ClassCountMismatchError(MAETransferError):
    """A classifier whose head has another number of classes than the dataset folder it meets."""


class OptionError(MAETransferError):
    """An option value that cannot work: out of range, unknown, or not possible on this machine."""


class LossTargetError(MAETransferError):
    """A decoder whose reconstruction target (raw or normalised pixels) is unknown, or stated against the file."""


class FeatureMismatchError(MAETransferError):
    """A probe feature (cls token or mean of patch tokens) whose final norm the checkpoint does not hold."""
