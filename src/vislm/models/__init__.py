"""Model components. Importing this package registers every vision encoder, text model
and task model (fusion) with the registries in `vislm.registry`."""

# Order matters: the task models read the towers' tiny kwargs when they register.
from vislm.models import vision, text  # noqa: F401  (registration)
from vislm.models import fusion  # noqa: F401  (registration)
from vislm.models import hf  # noqa: F401  (registration: Hugging Face towers and bridges)
