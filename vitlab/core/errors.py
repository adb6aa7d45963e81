"""One exception type for every input problem a user can fix.

Stages catch it and print its message as a single line, then exit non-zero, so a bad
parameter or file never ends in a traceback or a half-written output.
"""


class VitlabError(Exception):
    """A problem with the user's input: the message names the parameter or file and the fix."""
