"""On-board self-test: the channel runs a built-in GEMV and shows pass/fail on LEDs.

Everything the test needs comes in as Python lists (computed outside rtl/, see
``sim/selftest.py``) and is stored in ROMs:

* ``backdoor``: (bank, address, burst) words written into the banks' storage first;
* ``program``: (cycle, encoded command) entries and ``wdata`` bursts, copied into a
  :class:`~rtl.channel.CommandPlayer` and played cycle-exactly;
* ``expected``: (cycle, is PIM result, burst) of every burst the data bus must carry,
  in order; the checker compares each burst with the next entry, cycle and bits.

The run passes when every expected burst arrived at its cycle with its bits, no other
burst appeared, the channel flagged no error and the player was never late.
"""
from amaranth.build import ResourceError
from amaranth.hdl import Cat, ClockDomain, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..channel import ChannelDatapath, ChannelError, CommandPlayer
from ..isa import command_layout


def _bits(count: int) -> int:
    return max(1, (count - 1).bit_length())


class SelfTest(wiring.Component):
    """Backdoor load, program load, playback and result check of one channel.

    Ports:
      ``restart`` (In): from ``done``, run the whole test again (a pulse).
      ``done`` (Out): the check finished; ``passed``/``failed`` (Out) tell how.
      ``busy`` (Out): loading or running.
      ``matched`` (Out): expected bursts seen so far, bit- and cycle-exact.
      ``mismatch`` (Out): a burst differed, came at another cycle, or was not expected.
      ``late`` (Out): the player missed a command's cycle.
      ``error``/``error_code`` (Out): the channel's sticky error flag and its first code.
      ``heartbeat`` (Out): bit ``heartbeat_bits - 1`` of a free-running counter.
    """

    def __init__(self, config, backdoor, program, wdata, expected, end: int,
                 heartbeat_bits: int = 24):
        g = config.geometry
        self.config = config
        self.burst_bits = g.burst_bytes * 8
        self.datapath = ChannelDatapath(config, shared_bank_module=False)
        if not program:
            raise ValueError("the self-test needs at least one command")
        if not expected:
            raise ValueError("the self-test needs at least one expected burst")
        last = max([at for at, _ in program] + [cycle for cycle, _, _ in expected])
        if end <= last:
            raise ValueError(f"end cycle {end} is not after the last event ({last})")
        self.end = end
        self.heartbeat_bits = heartbeat_bits
        self.player = CommandPlayer(config, depth=len(program), wdata_depth=max(2, len(wdata)))
        self.counts = {"backdoor": len(backdoor), "program": len(program), "wdata": len(wdata),
                       "expected": len(expected)}

        depth = self.datapath.bank_depth
        self._bank_bits, self._addr_bits = _bits(g.banks), _bits(depth)
        for bank, addr, burst in backdoor:
            if not (0 <= bank < g.banks and 0 <= addr < depth and 0 <= burst < 1 << self.burst_bits):
                raise ValueError(f"backdoor write ({bank}, {addr}) outside {g.banks} banks x "
                                 f"{depth} bursts, or data wider than {self.burst_bits} bits")
        self._cmd_bits = command_layout(config).size
        self._cycle_bits = max(1, end.bit_length())

        def rom(width, words):
            return Memory(shape=width, depth=max(1, len(words)), init=words or [0])

        self._backdoor_rom = rom(self.burst_bits + self._addr_bits + self._bank_bits,
                                 [burst | addr << self.burst_bits
                                  | bank << (self.burst_bits + self._addr_bits)
                                  for bank, addr, burst in backdoor])
        self._program_rom = rom(32 + self._cmd_bits, [at | cmd << 32 for at, cmd in program])
        self._wdata_rom = rom(self.burst_bits, list(wdata))
        self._expected_rom = rom(self.burst_bits + 1 + self._cycle_bits,
                                 [burst | int(pim) << self.burst_bits
                                  | cycle << (self.burst_bits + 1)
                                  for cycle, pim, burst in expected])
        super().__init__({
            "restart": In(1), "done": Out(1), "passed": Out(1), "failed": Out(1), "busy": Out(1),
            "matched": Out(range(len(expected) + 1)), "mismatch": Out(1), "late": Out(1),
            "error": Out(1), "error_code": Out(ChannelError), "heartbeat": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.datapath = dp = self.datapath
        m.submodules.player = player = self.player
        roms = {"backdoor_rom": self._backdoor_rom, "program_rom": self._program_rom,
                "wdata_rom": self._wdata_rom, "expected_rom": self._expected_rom}
        for name, rom in roms.items():
            m.submodules[name] = rom
        backdoor, program = self._backdoor_rom.read_port(), self._program_rom.read_port()
        wdata, expected = self._wdata_rom.read_port(), self._expected_rom.read_port()
        counts = self.counts

        beat = Signal(self.heartbeat_bits)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += [self.heartbeat.eq(beat[-1]), self.late.eq(player.late),
                     self.error.eq(dp.error), self.error_code.eq(dp.error_code)]

        # Loading: one index walks all three load ROMs; their words arrive one clock later
        # and are written then (``loading`` marks that clock).
        loads = max(counts["backdoor"], counts["program"], counts["wdata"])
        index = Signal(range(loads + 1))
        index_q = Signal.like(index)
        loading = Signal()
        m.d.sync += [index_q.eq(index), loading.eq(0)]
        for port in (backdoor, program, wdata):
            m.d.comb += port.addr.eq(index)
        burst_bits, addr_bits = self.burst_bits, self._addr_bits
        # Backdoor writes go through registers (written one clock after their ROM word
        # arrives; the last one in START, before the first command reaches the channel).
        # One registered data bus carries the backdoor bursts while loading and the WR data
        # while running, to both of the channel's write-data inputs: the banks then need no
        # multiplexer between the two (its select would fan out to every storage bit).
        bus_data = Signal(burst_bits)
        backdoor_en = Signal()
        backdoor_addr = Signal.like(dp.backdoor_addr)
        backdoor_bank = Signal.like(dp.backdoor_bank)
        m.d.sync += [
            backdoor_en.eq(loading & (index_q < counts["backdoor"])),
            backdoor_addr.eq(backdoor.data[burst_bits:burst_bits + addr_bits]),
            backdoor_bank.eq(backdoor.data[burst_bits + addr_bits:]),
            bus_data.eq(Mux(loading, backdoor.data[:burst_bits], player.wdata)),
        ]
        m.d.comb += [
            dp.backdoor_en.eq(backdoor_en), dp.backdoor_data.eq(bus_data),
            dp.backdoor_addr.eq(backdoor_addr), dp.backdoor_bank.eq(backdoor_bank),
            player.load_en.eq(loading & (index_q < counts["program"])),
            player.load_addr.eq(index_q),
            player.load_at.eq(program.data[:32]), player.load_cmd.eq(program.data[32:]),
            player.wload_en.eq(loading & (index_q < counts["wdata"])),
            player.wload_addr.eq(index_q), player.wload_data.eq(wdata.data),
            player.length.eq(counts["program"]),
        ]
        # The player's commands reach the channel through a register (a clock of their own
        # for the ROM compare, ahead of the channel's command decoding): the channel runs
        # one clock behind the player's cycle count, which the checker takes off.
        cmd, cmd_valid = Signal(command_layout(self.config)), Signal()
        m.d.sync += [cmd.eq(player.cmd), cmd_valid.eq(player.cmd_valid)]
        m.d.comb += [dp.cmd.eq(cmd), dp.cmd_valid.eq(cmd_valid), dp.wdata.eq(bus_data)]

        # Checking: ``now`` counts from the player's cycle 0; the expected ROM shows the next
        # burst due (fetched one clock ahead, as the player fetches its program). The data
        # bus is registered first (``seen``), so the wide compare has a clock of its own;
        # ``seen_at`` is the burst's cycle in the player's count (``now`` two clocks back:
        # the command register and ``seen``). RUN goes on to end + 1 and DRAIN checks the
        # last burst, so every burst up to cycle ``end`` is checked.
        now = Signal(range(self.end + 2))
        now_q = Signal.like(now)
        pointer = Signal(range(counts["expected"] + 1))
        want = Signal(self.burst_bits + 1 + self._cycle_bits)
        m.d.comb += want.eq(expected.data)
        seen = Signal(burst_bits + 1)
        seen_at = Signal.like(now)
        arrived = Signal()
        m.d.sync += [seen.eq(Cat(dp.rdata, dp.rdata_pim)), now_q.eq(now), seen_at.eq(now_q),
                     arrived.eq(dp.rdata_valid)]
        matches = ((pointer < counts["expected"]) & (want[burst_bits + 1:] == seen_at)
                   & (want[:burst_bits + 1] == seen))
        m.d.comb += expected.addr.eq(Mux(arrived, pointer + 1, pointer))

        with m.FSM() as fsm:
            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [index.eq(index + 1), loading.eq(1)]
                with m.If(index == loads - 1):
                    m.next = "SETTLE"
            with m.State("SETTLE"):   # the last load word is written in this clock
                m.d.comb += self.busy.eq(1)
                m.next = "START"
            with m.State("START"):
                m.d.comb += [self.busy.eq(1), player.start.eq(1), expected.addr.eq(0)]
                m.d.sync += [now.eq(0), pointer.eq(0), self.matched.eq(0), self.mismatch.eq(0),
                             self.done.eq(0), self.passed.eq(0), self.failed.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += now.eq(now + 1)
                with m.If(now == self.end + 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"):
                good = (~self.mismatch & (self.matched == counts["expected"]) & ~dp.error
                        & ~player.late & ~player.running)
                m.d.sync += [self.done.eq(1), self.passed.eq(good), self.failed.eq(~good)]
                m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.restart):
                    m.d.sync += [index.eq(0), self.done.eq(0), self.passed.eq(0),
                                 self.failed.eq(0)]
                    m.next = "LOAD"
        with m.If(arrived & (fsm.ongoing("RUN") | fsm.ongoing("DRAIN"))):
            m.d.sync += pointer.eq(pointer + 1)
            with m.If(matches):
                m.d.sync += self.matched.eq(self.matched + 1)
            with m.Else():
                m.d.sync += self.mismatch.eq(1)
        return m


def ecp5_pll_parameters(f_in_mhz: float, f_out_mhz: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` (feedback from CLKOP), as ecppll picks
    them: phase detector 3.125-400 MHz, VCO 400-800 MHz, output 3.125-400 MHz; the
    closest output (within 1 %), then the VCO nearest 600 MHz."""
    best = None
    for clki in range(1, 129):
        pfd = f_in_mhz / clki
        if not 3.125 <= pfd <= 400:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            if not 3.125 <= out <= 400:
                continue
            for clkop in range(1, 129):
                vco = out * clkop
                if 400 <= vco <= 800:
                    key = (abs(out - f_out_mhz), abs(vco - 600))
                    if best is None or key < best[0]:
                        best = (key, {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                                      "f_out_mhz": out, "vco_mhz": vco})
    if best is None or best[0][0] > 0.01 * f_out_mhz:
        raise ValueError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz")
    return best[1]


class SelfTestBoard(Elaboratable):
    """:class:`SelfTest` on a board's LEDs: LED0 done, LED1 pass, LED2 fail, LED3 busy,
    the last LED a heartbeat. ``button_fire`` 0 (where the board has one) restarts it.

    ``clock_mhz``: the self-test's clock, made by an ECP5 PLL from the board's clock (the
    ``tiny`` preset's single-cycle FP32 adders limit fmax to about 20 MHz, the ``fpga``
    preset reaches about 60 MHz; the default 12.5 MHz suits both); ``None`` runs on the
    board clock directly. Reset is held until the PLL locks.
    """

    LEDS = {"done": 0, "passed": 1, "failed": 2, "busy": 3}

    def __init__(self, selftest: SelfTest, heartbeat_led: int = 7,
                 clock_mhz: float | None = 12.5):
        self.selftest = selftest
        self.heartbeat_led = heartbeat_led
        self.clock_mhz = clock_mhz

    def _pll(self, m, platform):
        f_in = platform.default_clk_frequency / 1e6
        pll = ecp5_pll_parameters(f_in, self.clock_mhz)
        pin = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_in = clk_in = io.Buffer("i", pin)
        m.domains.sync = sync = ClockDomain("sync")
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{f_in:g}", a_FREQUENCY_PIN_CLKOP=f"{pll['f_out_mhz']:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=pll["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=pll["CLKOP_DIV"],
            p_CLKOP_CPHASE=pll["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=pll["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=clk_in.i, o_CLKOP=sync.clk, i_CLKFB=sync.clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        # No clock constraint here: nextpnr derives the output's from the board clock's
        # constraint and the PLL's dividers ("Derived frequency constraint ... for net clk").

    def elaborate(self, platform):
        m = Module()
        m.submodules.selftest = test = self.selftest
        if platform is None:
            return m
        if self.clock_mhz is not None:
            self._pll(m, platform)
        for name, number in {**self.LEDS, "heartbeat": self.heartbeat_led}.items():
            led = m.submodules[f"led_{name}"] = io.Buffer("o", platform.request("led", number,
                                                                               dir="-"))
            m.d.comb += led.o.eq(getattr(test, name))
        try:
            pin = platform.request("button_fire", 0, dir="-")
        except ResourceError:  # a board without the button: no restart
            return m
        m.submodules.restart_button = button = io.Buffer("i", pin)
        m.d.comb += test.restart.eq(button.i)
        return m
