"""The one exception the scripts show as a line of text: low layers (data, checkpoints,
devices) raise it without importing the command-line module."""


class AbnError(Exception):
    """A problem with the user's input or environment, shown as one line without traceback."""
