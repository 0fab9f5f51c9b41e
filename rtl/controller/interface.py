"""What the per-channel memory controller exchanges with its requesters.

Normal traffic: 64-byte (one burst) reads and writes addressed by DRAM coordinates, each
with a tag; read data and write acknowledgements come back with the tag. PIM traffic: an
in-order queue of GWRITE, PIM_HEADER and PIM_GEMV transactions; each PIM_GEMV returns one
burst (one FP16 per bank) with its tag. All are ``lib.stream`` payloads."""
from amaranth.lib import data, enum

from ..config import DeviceConfig

__all__ = ["PimOp", "request_layout", "read_response_layout", "write_response_layout",
           "pim_request_layout", "pim_response_layout", "COUNTERS", "counters_layout"]


class PimOp(enum.Enum, shape=2):
    GWRITE = 0   # copy (rank, bankgroup, bank, row) into the global buffer
    HEADER = 1   # a row set: open ``row`` in every bank's PIM buffer for ``gemvs`` GEMVs
    GEMV = 2     # PIM_GEMV(``comps``) from chunk ``column`` of the open row set


def field_bits(count: int) -> int:
    """Bits of a field with ``count`` values; at least 1 (no zero-width ports)."""
    return max(1, (count - 1).bit_length())


def _address_fields(config: DeviceConfig) -> dict:
    g = config.geometry
    return {"rank": field_bits(g.ranks), "bankgroup": field_bits(g.bankgroups),
            "bank": field_bits(g.banks_per_group), "row": field_bits(g.rows)}


def request_layout(config: DeviceConfig) -> data.StructLayout:
    """A 64-byte read or write: ``column`` counts bursts in the row; ``data`` only for writes."""
    g = config.geometry
    return data.StructLayout({"write": 1, **_address_fields(config),
                              "column": range(g.bursts_per_row),
                              "tag": config.controller.tag_bits, "data": g.burst_bytes * 8})


def read_response_layout(config: DeviceConfig) -> data.StructLayout:
    return data.StructLayout({"tag": config.controller.tag_bits,
                              "data": config.geometry.burst_bytes * 8})


def write_response_layout(config: DeviceConfig) -> data.StructLayout:
    return data.StructLayout({"tag": config.controller.tag_bits})


#: The most PIM_GEMVs one HEADER announces (its ``gemvs`` field)
MOST_GEMVS = 1024


def most_comps(config: DeviceConfig) -> int:
    """The most COMPs a PIM request counts (``comps``): a whole row for every GEMV."""
    return config.bus.comps_per_row * MOST_GEMVS


def pim_request_layout(config: DeviceConfig) -> data.StructLayout:
    """``column``/``comps``: the GEMV's first chunk and its k; ``gemvs``/``comps`` of a
    HEADER: how many PIM_GEMVs follow on the row set and their COMPs in all (for the
    refresh-deadline estimate)."""
    return data.StructLayout({"op": PimOp, **_address_fields(config),
                              "column": range(config.bus.comps_per_row),
                              "comps": range(most_comps(config) + 1),
                              "gemvs": range(MOST_GEMVS + 1),
                              "tag": config.controller.tag_bits})


def pim_response_layout(config: DeviceConfig) -> data.StructLayout:
    return read_response_layout(config)


#: The controller's counters (contract 4), in the order of the ``counters`` port.
COUNTERS = ("cycles", "ACT", "RD", "WR", "PRE", "REF", "GWRITE", "G_ACT", "PIM_GEMV",
            "PIM_PRECHARGE", "row_hits", "row_misses", "comps", "pim_busy_cycles",
            "normal_during_pim", "refresh_late_max", "pim_refresh_holds",
            "read_queue_full", "write_queue_full", "bank_queue_full", "write_drains",
            "pim_occupied_cycles")


def counters_layout() -> data.StructLayout:
    return data.StructLayout({name: 32 for name in COUNTERS})
