"""The project's exception types, one home for each kind of failure.

Entry points (`mae_jax.main`, the converter and export CLIs, the protocol) turn
these into one line on stderr and a non-zero exit instead of a traceback: they
are errors in the user's input or in the run's numbers, not bugs.
"""


class DataFormatError(ValueError):
  """Input data does not follow a supported layout (names the file, key, shape)."""


class NonFiniteError(DataFormatError, ArithmeticError):
  """NaN or Inf where finite numbers are required: input images (converter) or a
  training run's loss, gradient or model outputs (trainer, evaluation)."""


class VerificationError(ValueError):
  """A converted dataset does not match its own metadata (counts, checksums)."""


# What the command-line entry points report in one line (exit status 2).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NonFiniteError)
