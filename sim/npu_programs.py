"""NPU programs and their data: matrices laid out in HBM (byte addresses, row-major, row
pitch a multiple of the scratchpad word) and in the scratchpad (words of
``NpuConfig.word_bytes``: one 64-byte burst by default, or ``k`` bursts; a word lies in
HBM as its ``k`` bursts in order, burst slice 0 first, as the DMA moves it), the backdoor
contents of every channel's banks, programs (DMA_LOAD A and B, GEMM, DMA_STORE C,
read-back), and the expected results from ``sim.golden.gemm.gemm``."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtl.isa.npu import Instruction, dma_load, dma_store, gemm, halt, wait
from sim.golden.gemm import gemm as golden_gemm

__all__ = ["Matrix", "HbmImage", "HbmAllocator", "GemmProgram", "gemm_program",
           "matrix_words", "words_to_matrix", "burst_location", "stored_bursts",
           "pack_words", "unpack_word", "bank_row_address", "row_words", "split_words",
           "join_bursts"]


def pack_words(values: np.ndarray) -> int:
    """A word (a burst, or a scratchpad word) from its elements, element 0 in the low bits."""
    return int.from_bytes(np.ascontiguousarray(values).tobytes(), "little")


def unpack_word(word: int, dtype, word_bytes: int = 64) -> np.ndarray:
    """The elements of a ``word_bytes`` word (default one 64-byte burst)."""
    return np.frombuffer(int(word).to_bytes(word_bytes, "little"), dtype=dtype).copy()


def split_words(words, word_bytes: int, burst_bytes: int = 64) -> list[int]:
    """Scratchpad words of ``word_bytes`` -> their bursts in HBM order (slice 0 first)."""
    k, bits = word_bytes // burst_bytes, burst_bytes * 8
    mask = (1 << bits) - 1
    return [(int(w) >> (bits * s)) & mask for w in words for s in range(k)]


def join_bursts(bursts, word_bytes: int, burst_bytes: int = 64) -> list[int]:
    """The inverse of :func:`split_words` (a partial last word is zero-padded)."""
    k, bits = word_bytes // burst_bytes, burst_bytes * 8
    bursts = list(bursts)
    return [sum(int(b) << (bits * s) for s, b in enumerate(bursts[i:i + k]))
            for i in range(0, len(bursts), k)]


def _dtype(bits: int):
    return {16: np.uint16, 32: np.uint32}[bits]


@dataclass
class Matrix:
    """A rows x cols matrix of FP16 (``bits`` 16) or FP32 bit patterns, ``pitch`` words per
    row (scratchpad words), at HBM byte address ``hbm`` and scratchpad word ``sp``."""
    rows: int
    cols: int
    bits: int
    pitch: int
    hbm: int = 0
    sp: int = 0

    @property
    def words(self) -> int:
        return self.rows * self.pitch


def row_words(cols: int, bits: int, word_bytes: int = 64) -> int:
    per = word_bytes * 8 // bits
    return -(-cols // per)


def matrix_words(values: np.ndarray, bits: int, pitch: int, word_bytes: int = 64) -> list[int]:
    """The words (of ``word_bytes``) of a row-major matrix with ``pitch`` words per row
    (padding zero)."""
    values = np.asarray(values, dtype=_dtype(bits))
    per = word_bytes * 8 // bits
    rows, cols = values.shape
    padded = np.zeros((rows, pitch * per), dtype=values.dtype)
    padded[:, :cols] = values
    return [pack_words(padded[r, w * per:(w + 1) * per]) for r in range(rows) for w in range(pitch)]


def words_to_matrix(words, rows: int, cols: int, bits: int, pitch: int,
                    word_bytes: int = 64) -> np.ndarray:
    """The inverse of :func:`matrix_words`."""
    dtype = _dtype(bits)
    flat = np.concatenate([unpack_word(w, dtype, word_bytes) for w in words])
    per = word_bytes * 8 // bits
    return flat.reshape(rows, pitch * per)[:, :cols].copy()


def burst_location(config, address: int) -> tuple[int, int, int]:
    """(channel, flat bank, word in the bank's stored window) of the burst at byte
    ``address`` (``ChannelDatapath``'s backdoor addressing); raises ValueError for a row
    beyond ``config.stored_rows``."""
    g = config.geometry
    f = config.address_map.decode(g, address)
    if f["row"] >= config.stored_rows:
        raise ValueError(f"address {address:#x} is in row {f['row']}, beyond the "
                         f"{config.stored_rows} rows the RTL stores")
    bank = g.bank_index(f["rank"], f["bankgroup"], f["bank"])
    return f["channel"], bank, f["row"] * g.bursts_per_row + f["column"]


def stored_bursts(config) -> int:
    """Bursts from address 0 on that lie in stored rows (all of them: contiguous when the
    row is the address map's most significant field, as in every preset)."""
    g = config.geometry
    if config.address_map.order[0] != "row":
        raise ValueError("stored_bursts needs the row as the most significant address field")
    return config.stored_rows * g.capacity_bytes // g.rows // g.burst_bytes


def bank_row_address(config, channel: int, bank: int, row: int) -> int:
    """Byte address of burst 0 of ``row`` of flat ``bank`` in ``channel`` (the row's bursts
    follow at consecutive burst addresses when ``column`` sits just above ``offset``)."""
    g = config.geometry
    rank, bankgroup, b = g.bank_coords(bank)
    return config.address_map.encode(g, row=row, rank=rank, bankgroup=bankgroup, bank=b,
                                      channel=channel, column=0, offset=0)


class HbmImage:
    """Sparse HBM contents: burst byte address -> word."""

    def __init__(self, config):
        self.config = config
        self.words: dict[int, int] = {}

    def write_row(self, channel: int, bank: int, row: int, elements) -> None:
        """One bank row of FP16 bit patterns, burst by burst (any address map)."""
        g, amap = self.config.geometry, self.config.address_map
        rank, bankgroup, b = g.bank_coords(bank)
        per = g.burst_bytes // 2
        elements = np.asarray(elements, dtype=np.uint16)
        for column in range(g.bursts_per_row):
            address = amap.encode(g, row=row, rank=rank, bankgroup=bankgroup, bank=b,
                                  channel=channel, column=column, offset=0)
            self.words[address] = pack_words(elements[column * per:(column + 1) * per])

    def write(self, address: int, words) -> None:
        """Bursts from ``address`` on."""
        burst = self.config.geometry.burst_bytes
        for i, word in enumerate(words):
            self.words[address + i * burst] = int(word)

    def read(self, address: int, count: int) -> list[int]:
        """``count`` bursts from ``address`` on."""
        burst = self.config.geometry.burst_bytes
        return [self.words.get(address + i * burst, 0) for i in range(count)]

    def write_words(self, address: int, words) -> None:
        """Scratchpad words (``NpuConfig.word_bytes``) from ``address`` on, as their bursts."""
        self.write(address, split_words(words, self.config.npu.word_bytes,
                                        self.config.geometry.burst_bytes))

    def read_words(self, address: int, count: int) -> list[int]:
        """``count`` scratchpad words from their bursts at ``address``."""
        wb, burst = self.config.npu.word_bytes, self.config.geometry.burst_bytes
        return join_bursts(self.read(address, count * (wb // burst)), wb, burst)

    def backdoor(self) -> dict[int, list[tuple[int, int, int]]]:
        """channel -> [(flat bank, word in bank, value)] to preload through the channel
        datapath's ``backdoor_*`` port."""
        out: dict[int, list] = {c: [] for c in range(self.config.geometry.channels)}
        for address, word in sorted(self.words.items()):
            channel, bank, where = burst_location(self.config, address)
            out[channel].append((bank, where, word))
        return out


class HbmAllocator:
    """Hands out burst-aligned HBM regions from ``base`` (byte address) within the stored
    rows."""

    def __init__(self, config, base: int = 0):
        self.config = config
        self.next = base
        self.limit = stored_bursts(config) * config.geometry.burst_bytes

    def take(self, words: int) -> int:
        """A region of ``words`` bursts."""
        address = self.next
        self.next += words * self.config.geometry.burst_bytes
        if self.next > self.limit:
            raise ValueError(f"HBM region of {words} bursts at {address:#x} passes the stored "
                             f"rows (limit {self.limit:#x})")
        return address


@dataclass
class GemmProgram:
    """A GEMM from HBM to HBM and back: ``program`` loads A, B (and C with ``acc``) by DMA,
    runs the GEMM, stores C, then loads the stored C again into ``readback`` (scratchpad
    words) so the testbench can read it through the core's ``ext_read`` port."""
    a: Matrix
    b: Matrix
    c: Matrix
    readback: Matrix
    fp32: bool
    acc: bool
    image: HbmImage
    program: list[Instruction]
    expected: np.ndarray             # FP16 or FP32 bit patterns of C
    a_bits: np.ndarray = field(repr=False, default=None)
    b_bits: np.ndarray = field(repr=False, default=None)

    def result(self, words) -> np.ndarray:
        """C from the read-back words."""
        r = self.readback
        return words_to_matrix(words, r.rows, r.cols, r.bits, r.pitch,
                               self.image.config.npu.word_bytes)


def gemm_program(config, a_bits, b_bits, psum=None, fp32: bool = False, hbm_base: int = 0,
                 sp_base: int = 0, halt_at_end: bool = True, readback: bool = True,
                 allocator: HbmAllocator | None = None) -> GemmProgram:
    """Lay out C = A . B (+ psum) in HBM and scratchpad and assemble its program.
    ``psum`` (FP32 bits, needs ``fp32``) is the initial C, loaded from HBM (``acc``).
    Scratchpad words of ``NpuConfig.word_bytes`` (``k`` bursts): a matrix of ``w`` words
    is ``k w`` bursts in HBM, moved by DMAs of ``count = k w``."""
    g = config.geometry
    wb = config.npu.word_bytes                    # the scratchpad word, in bytes
    kw = wb // g.burst_bytes                      # bursts per word
    a_bits = np.asarray(a_bits, dtype=np.uint16)
    b_bits = np.asarray(b_bits, dtype=np.uint16)
    m, k = a_bits.shape
    n = b_bits.shape[1]
    acc = psum is not None
    if acc and not fp32:
        raise ValueError("accumulating into C needs FP32 C")
    c_bits = 32 if fp32 else 16
    a = Matrix(m, k, 16, row_words(k, 16, wb))
    b = Matrix(k, n, 16, row_words(n, 16, wb))
    c = Matrix(m, n, c_bits, row_words(n, c_bits, wb))
    rb = Matrix(m, n, c_bits, c.pitch)
    alloc = allocator or HbmAllocator(config, hbm_base)
    sp = sp_base
    for mat in (a, b, c):
        mat.hbm = alloc.take(mat.words * kw)
        mat.sp, sp = sp, sp + mat.words
    rb.sp, sp = sp, sp + rb.words
    rb.hbm = c.hbm
    if sp > config.npu.scratchpad_words:
        raise ValueError(f"the GEMM needs {sp} scratchpad words, the NPU has "
                         f"{config.npu.scratchpad_words}")
    image = HbmImage(config)
    image.write_words(a.hbm, matrix_words(a_bits, 16, a.pitch, wb))
    image.write_words(b.hbm, matrix_words(b_bits, 16, b.pitch, wb))
    if acc:
        image.write_words(c.hbm, matrix_words(np.asarray(psum, np.uint32), 32, c.pitch, wb))
    H, W = config.npu.array_rows, config.npu.array_cols
    want32, want16 = golden_gemm(a_bits, b_bits, H, W, psum)
    program = [dma_load(a.hbm, a.sp, a.words * kw), dma_load(b.hbm, b.sp, b.words * kw)]
    if acc:
        program.append(dma_load(c.hbm, c.sp, c.words * kw))
    program += [wait("dma"),
                gemm(a.sp, b.sp, c.sp, m, k, n, a.pitch, b.pitch, c.pitch, fp32=fp32, acc=acc),
                wait("gemm"), dma_store(c.hbm, c.sp, c.words * kw)]
    if readback:
        program += [wait("dma"), dma_load(rb.hbm, rb.sp, rb.words * kw)]
    if halt_at_end:
        program.append(halt())
    return GemmProgram(a, b, c, rb, fp32, acc, image, program, want32 if fp32 else want16,
                       a_bits, b_bits)
