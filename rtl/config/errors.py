class ConfigError(ValueError):
    """A configuration that cannot be built; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(field, message)


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def require_ints(obj, names, minimum: int = 1) -> None:
    """Each named field of ``obj`` is an integer >= ``minimum``."""
    prefix = type(obj).__name__
    for name in names:
        value = getattr(obj, name)
        require(isinstance(value, int) and not isinstance(value, bool), f"{prefix}.{name}",
                f"must be an integer, got {value!r}")
        require(value >= minimum, f"{prefix}.{name}",
                f"must be {'positive' if minimum == 1 else f'at least {minimum}'}, got {value}")


def require_positive_ints(obj, names) -> None:
    require_ints(obj, names, minimum=1)


def require_nonnegative_ints(obj, names) -> None:
    require_ints(obj, names, minimum=0)
