"""The runtime's error types, in a leaf module that every layer (runtime, prover, CLI) imports."""


class ModelFormatError(ValueError):
    """The file is not a model this runtime can run; the message says why."""


class TrainingError(ValueError):
    """Bad training input or configuration; the message names the argument."""
