"""DRAM geometry, address map and timing (NEUPIMS.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import require, is_power_of_two, require_positive_ints, require_nonnegative_ints

ADDRESS_FIELDS = ("row", "rank", "bankgroup", "bank", "channel", "column", "offset")


@dataclass(frozen=True)
class DramGeometry:
    """Organisation of the HBM-PIM memory.

    A *column* is one beat of the data bus (``column_bytes`` wide); a RD or WR moves
    ``burst_length`` columns (one burst). The address map's ``column`` field counts
    bursts within a row.
    """
    channels: int = 32
    ranks: int = 2                 # pseudo-channels sharing one command/data bus
    bankgroups: int = 4            # per rank
    banks_per_group: int = 4
    rows: int = 32768              # per bank
    columns: int = 64              # bus beats per row
    column_bytes: int = 16         # bus width: 128 bit
    burst_length: int = 4

    def __post_init__(self):
        require_positive_ints(self, ("channels", "ranks", "bankgroups", "banks_per_group", "rows",
                                     "columns", "column_bytes", "burst_length"))
        require(self.burst_length % 2 == 0, "DramGeometry.burst_length",
                f"must be even (double data rate: two beats per clock), got {self.burst_length}")
        require(self.columns % self.burst_length == 0, "DramGeometry.columns",
                f"a row of {self.columns} columns is not a multiple of the burst length "
                f"{self.burst_length}")
        require(self.column_bytes % 2 == 0, "DramGeometry.column_bytes",
                f"must hold whole FP16 values, got {self.column_bytes}")

    @property
    def banks_per_rank(self) -> int:
        return self.bankgroups * self.banks_per_group

    @property
    def banks(self) -> int:
        """Banks per channel."""
        return self.ranks * self.banks_per_rank

    @property
    def row_bytes(self) -> int:
        return self.columns * self.column_bytes

    @property
    def row_elements(self) -> int:
        """FP16 values per row."""
        return self.row_bytes // 2

    @property
    def burst_bytes(self) -> int:
        return self.column_bytes * self.burst_length

    @property
    def bursts_per_row(self) -> int:
        return self.columns // self.burst_length

    @property
    def bus_bits(self) -> int:
        return self.column_bytes * 8

    @property
    def channel_bytes(self) -> int:
        return self.banks * self.rows * self.row_bytes

    @property
    def capacity_bytes(self) -> int:
        return self.channels * self.channel_bytes

    def bank_index(self, rank: int, bankgroup: int, bank: int) -> int:
        """Flat bank number within a channel: rank-major, then bank group, then bank."""
        return (rank * self.bankgroups + bankgroup) * self.banks_per_group + bank

    def bank_coords(self, index: int) -> tuple[int, int, int]:
        """(rank, bankgroup, bank) of a flat bank number."""
        bank = index % self.banks_per_group
        bankgroup = (index // self.banks_per_group) % self.bankgroups
        return index // self.banks_per_rank, bankgroup, bank


@dataclass(frozen=True)
class AddressMap:
    """Physical address layout, MSB first. Widths are derived from the geometry."""
    order: tuple[str, ...] = ADDRESS_FIELDS

    def __post_init__(self):
        require(sorted(self.order) == sorted(ADDRESS_FIELDS), "AddressMap.order",
                f"must name each of {', '.join(ADDRESS_FIELDS)} exactly once, got {self.order}")
        require(self.order[-1] == "offset", "AddressMap.order",
                "the byte offset within a burst must be the least significant field")

    @staticmethod
    def counts(geometry: DramGeometry) -> dict[str, int]:
        return {"row": geometry.rows, "rank": geometry.ranks, "bankgroup": geometry.bankgroups,
                "bank": geometry.banks_per_group, "channel": geometry.channels,
                "column": geometry.bursts_per_row, "offset": geometry.burst_bytes}

    def validate(self, geometry: DramGeometry) -> None:
        field_names = {"row": "rows", "rank": "ranks", "bankgroup": "bankgroups",
                       "bank": "banks_per_group", "channel": "channels",
                       "column": "columns / burst_length", "offset": "column_bytes * burst_length"}
        for name, count in self.counts(geometry).items():
            require(is_power_of_two(count), f"DramGeometry.{field_names[name]}",
                    f"{count} does not fit the binary address map (field '{name}' needs a "
                    f"power of two)")

    def widths(self, geometry: DramGeometry) -> dict[str, int]:
        return {name: count.bit_length() - 1 for name, count in self.counts(geometry).items()}

    def address_bits(self, geometry: DramGeometry) -> int:
        return sum(self.widths(geometry).values())

    def decode(self, geometry: DramGeometry, address: int) -> dict[str, int]:
        widths = self.widths(geometry)
        fields = {}
        for name in reversed(self.order):
            fields[name] = address & ((1 << widths[name]) - 1)
            address >>= widths[name]
        if address:
            raise ValueError(f"address beyond the capacity of {geometry.capacity_bytes} bytes")
        return fields

    def encode(self, geometry: DramGeometry, **fields: int) -> int:
        widths = self.widths(geometry)
        address = 0
        for name in self.order:
            value = fields.get(name, 0)
            if not 0 <= value < 1 << widths[name]:
                raise ValueError(f"{name}={value} does not fit in {widths[name]} bits")
            address = (address << widths[name]) | value
        return address


#: refresh-rate multipliers the controllers offer at run time (``DeviceConfig.refresh_rate``;
#: HBM's temperature-compensated refresh doubles the rate above 85 C; 4x for studies of
#: refresh pressure): the refresh interval is ``tREFI // rate``
REFRESH_RATES = (1, 2, 4)


@dataclass(frozen=True)
class DramTiming:
    """Timing parameters in clock cycles (NEUPIMS.md 2.1 and 2.3); derived ones are properties.

    ACT is a one-cycle command in this convention.
    """
    tCK_ps: int = 1000
    CL: int = 14
    CWL: int = 4
    AL: int = 0
    tRCDRD: int = 14
    tRCDWR: int = 14
    tRP: int = 14
    tRAS: int = 34
    tRRD_S: int = 4
    tRRD_L: int = 6
    tWTR_S: int = 6
    tWTR_L: int = 8
    tFAW: int = 30
    tWR: int = 16
    tCCD_S: int = 1
    tCCD_L: int = 2
    tRFC: int = 260
    tREFI: int = 3900
    tRTP: int = 5
    tRTRS: int = 2
    # PIM: an accumulation needs this many COMP slots before its READRES (adder pipeline).
    comp_min_slots: int = 6
    # How late an all-bank refresh may be issued after it falls due (controller bound).
    refresh_max_late: int = 400

    def __post_init__(self):
        require_positive_ints(self, ("tCK_ps", "CL", "CWL", "tRCDRD", "tRCDWR", "tRP", "tRAS",
                                     "tRRD_S", "tRRD_L", "tWTR_S", "tWTR_L", "tFAW", "tWR",
                                     "tCCD_S", "tCCD_L", "tRFC", "tREFI", "tRTP", "comp_min_slots"))
        require_nonnegative_ints(self, ("AL", "tRTRS", "refresh_max_late"))
        require(self.tRRD_L >= self.tRRD_S, "DramTiming.tRRD_L", "must be >= tRRD_S")
        require(self.tCCD_L >= self.tCCD_S, "DramTiming.tCCD_L", "must be >= tCCD_S")
        require(self.tWTR_L >= self.tWTR_S, "DramTiming.tWTR_L", "must be >= tWTR_S")
        require(self.tREFI > self.tRFC, "DramTiming.tREFI", "must exceed tRFC")

    # -- derived (NEUPIMS.md 2.1 "Derived") --
    @property
    def clock_hz(self) -> float:
        return 1e12 / self.tCK_ps

    @property
    def tRC(self) -> int:
        return self.tRAS + self.tRP

    @property
    def RL(self) -> int:
        return self.AL + self.CL

    @property
    def WL(self) -> int:
        return self.AL + self.CWL


@dataclass(frozen=True)
class BusTiming:
    """Timing that depends on both the DRAM timing and the geometry (burst length, row size)."""
    timing: DramTiming
    geometry: DramGeometry
    pim_lanes: int

    @property
    def burst(self) -> int:
        """Clocks a burst occupies the data bus (DDR)."""
        return self.geometry.burst_length // 2

    @property
    def read_data(self) -> int:
        """Clocks from RD (or READRES) to the end of its data: RL + burst."""
        return self.timing.RL + self.burst

    def ccd(self, same_bankgroup: bool) -> int:
        return max(self.burst, self.timing.tCCD_L if same_bankgroup else self.timing.tCCD_S)

    @property
    def rd_to_wr(self) -> int:
        return self.timing.RL + self.burst + self.timing.tRTRS - self.timing.WL

    def wr_to_rd(self, same_bankgroup: bool) -> int:
        t = self.timing
        return t.WL + self.burst + (t.tWTR_L if same_bankgroup else t.tWTR_S)

    @property
    def rd_to_pre(self) -> int:
        return self.timing.AL + self.timing.tRTP

    @property
    def wr_to_pre(self) -> int:
        return self.timing.WL + self.burst + self.timing.tWR

    @property
    def rank_switch(self) -> int:
        """Spacing of two data bursts from different ranks."""
        return self.burst + self.timing.tRTRS

    @property
    def comp_interval(self) -> int:
        """One all-bank COMP every max(BL/2, tCCD_S) clocks."""
        return max(self.burst, self.timing.tCCD_S)

    @property
    def comps_per_row(self) -> int:
        return self.geometry.row_elements // self.pim_lanes

    @property
    def gwrite_busy(self) -> int:
        """GWRITE moves a row in lane-wide chunks at tCCD_S + tCCD_L each: 96 clocks."""
        return (self.timing.tCCD_S + self.timing.tCCD_L) * self.comps_per_row

    def readres_after_first_comp(self, comps: int) -> int:
        return self.comp_interval * max(comps, self.timing.comp_min_slots)

    def gemv_busy(self, comps: int) -> int:
        """Channel busy time of PIM_GEMV(k): 2 x (max(k, 6) + 1)."""
        return self.comp_interval * (max(comps, self.timing.comp_min_slots) + 1)

    def gemv_result(self, comps: int) -> int:
        """Clocks from PIM_GEMV(k) issue to the last beat of its READRES data."""
        return self.readres_after_first_comp(comps) + self.read_data

    def row_set_open(self, gacts_per_rank: int) -> int:
        """G_ACT of a full row set (gacts_per_rank per rank, ranks in parallel) to first COMP."""
        return self.timing.tFAW * (gacts_per_rank - 1) + self.timing.tRCDRD

    def gemv_latency_estimate(self, precharges: int, gacts: int, comps: int, readouts: int) -> int:
        """The controller's estimate of NEUPIMS.md 2.3, checked against the refresh deadline."""
        t = self.timing
        return (precharges * t.tRTP + t.tFAW * max(gacts // 2 - 1, 0) + t.tRCDRD
                + self.comp_interval * max(comps, t.comp_min_slots) + self.burst * (readouts - 1))
