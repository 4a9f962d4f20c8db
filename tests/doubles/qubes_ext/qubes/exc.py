"""Double of qubes/exc.py: the exceptions an extension raises."""


class QubesException(Exception):
    pass


class QubesValueError(QubesException, ValueError):
    pass


class QubesPropertyValueError(QubesValueError):
    def __init__(self, holder, prop, value, msg=None):
        super().__init__(msg or f"Invalid value {value!r} for property {prop.__name__!r} "
                                f"of {holder!r}")
        self.holder = holder
        self.prop = prop
        self.value = value


class PermissionDenied(Exception):
    """Raised deliberately by handlers when they decide not to cooperate (R4.3 qubes.exc;
    R4.2 keeps it in qubes.api)."""
