"""Progress bars that tell the truth: live widgets in JupyterLab, finished text in reports.

facekit's loops draw their bars with ``tqdm.auto``. In a kernel that papermill runs headless, that
is a widget whose state is not saved, so the HTML report shows it frozen at 0% although the loop
finished. The runner sets ``FACEKIT_PLAIN_PROGRESS=1`` for its kernels; there, importing facekit
points ``tqdm.auto`` at plain text bars (stderr, refreshed every few seconds, kept when done), so
the report holds the finished bar and the runner can echo each refresh to the terminal.
"""

from __future__ import annotations

import os

PLAIN_ENV = "FACEKIT_PLAIN_PROGRESS"
PLAIN_MININTERVAL_S = 10.0  # seconds between refreshes of a plain bar (lines in the terminal)
_OFF = ("", "0", "false", "no", "off")


def plain_progress(environ=None) -> bool:
    """Whether progress bars should be plain text (``FACEKIT_PLAIN_PROGRESS`` set and not 0/false).

    Args:
        environ: mapping to read; None reads ``os.environ``.

    Returns:
        True under the runner (headless kernels), False in an interactive session.
    """
    value = (os.environ if environ is None else environ).get(PLAIN_ENV, "")
    return value.strip().lower() not in _OFF


def use_plain_progress(plain: bool | None = None) -> bool:
    """Make ``tqdm.auto.tqdm`` (and ``trange``) plain text bars when ``plain``.

    facekit modules import ``tqdm.auto`` inside the functions that draw a bar, so this reaches
    every bar drawn after the switch. A plain bar refreshes at most every
    :data:`PLAIN_MININTERVAL_S` and always stays on screen when it closes (``leave=True``).

    Args:
        plain: switch when True; None decides with :func:`plain_progress`.

    Returns:
        Whether ``tqdm.auto`` now draws plain bars.
    """
    if plain is None:
        plain = plain_progress()
    if not plain:
        return False
    import tqdm.auto
    import tqdm.autonotebook
    import tqdm.std

    current = tqdm.auto.tqdm
    if getattr(current, "facekit_plain", False):
        return True

    class PlainTqdm(tqdm.std.tqdm):
        """Text ``tqdm`` for headless kernels: a finished bar is what the report keeps."""

        facekit_plain = True

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("mininterval", PLAIN_MININTERVAL_S)
            kwargs["leave"] = True
            super().__init__(*args, **kwargs)

    def trange(*args, **kwargs):
        return PlainTqdm(range(*args), **kwargs)

    for module in (tqdm.auto, tqdm.autonotebook):
        module.tqdm, module.trange = PlainTqdm, trange
    return True
