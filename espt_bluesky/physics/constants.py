"""Physical constants (SI) and default conditions."""

FARADAY = 96485.33212  # C/mol
GAS_CONSTANT = 8.314462618  # J/(mol K)
T_DEFAULT = 298.15  # K


def f_nernst(temperature: float = T_DEFAULT) -> float:
    """F/(RT) in 1/V (38.92 V^-1 at 25 °C)."""
    return FARADAY / (GAS_CONSTANT * temperature)
