"""The deployment error (torch-free): `mtad` commands map it to exit status 2."""


class DeployError(ValueError):
    """An export that cannot be made or read, or input an exported model cannot take."""
