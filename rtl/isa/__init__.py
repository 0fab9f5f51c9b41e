"""Command and instruction encodings shared by RTL, testbenches and the compiler."""
from .dram import (Opcode, Command, command_layout, command_value, encode_command, decode_command,
                   command_decoder, PIM_OPCODES, BANK_OPCODES)

__all__ = ["Opcode", "Command", "command_layout", "command_value", "encode_command", "decode_command",
           "command_decoder",
           "PIM_OPCODES", "BANK_OPCODES"]
from .npu import NpuOp, NpuUnit, Instruction, instruction_layout, INSTRUCTION_BITS

__all__ += ["NpuOp", "NpuUnit", "Instruction", "instruction_layout", "INSTRUCTION_BITS"]
