"""gmmsession: Gaussian-mixture-model refinement of cryo-EM single-particle data, in Jupyter.

>>> import gmmsession as gs
>>> s = gs.Session.from_star("Refine3D/job042/run_data.star")
>>> s.reconstruct(); s.fsc()
"""

from gmmsession._version import __version__

from gmmsession.algorithms.simulate import simulate  # noqa: E402
from gmmsession.session.session import Session  # noqa: E402
from gmmsession.session.store import open_session  # noqa: E402

from gmmsession import viz as _viz  # noqa: E402,F401  (registers the notebook renderers)

__all__ = ["Session", "open_session", "simulate", "__version__"]
