"""The guest program a scenario's access step becomes: x86 machine code, for either of the live VM's guests.

The guest runs with paging off and flat 4 GiB segments (the VM sets them through KVM_SET_SREGS), so an
address the code uses is a guest-physical address and gfn `g` is at `g << 12`. A step
`{"op": "write", "gfn": g, "count": n, "stride": s}` becomes

    mov esi, g << 12        BE imm32
    mov ecx, n              B9 imm32
    mov eax, 0x5a5a5a5a     B8 imm32       (the value stored; any value dirties the page)
  again:
    mov [esi], eax          89 06          (a read is  mov eax, [esi]   8B 06)
    add esi, s << 12        81 C6 imm32
    dec ecx                 49
    jnz again               75 rel8        (0F 85 rel32 when the loop body is too long for rel8)
    hlt                     F4

so the accesses happen in the scenario's order, one per page, and the vCPU exits to userspace with
KVM_EXIT_HLT when they are done.

The native guest (`live.paging`) runs the same loop in 64-bit mode, under page tables that map every gfn
to itself. Two instructions change: `dec ecx` is `FF C9` (48+r is a REX prefix in 64-bit mode), and the
program ends with `out 0xe9, al` (`E6 E9`), which stops the vCPU with KVM_EXIT_IO: a natively running
guest's hlt is emulated and the guest carries on, so it cannot end a run. The 32-bit moves and adds
zero-extend into the 64-bit registers, and every address is below 4 GiB, so the rest is byte for byte
the same. The encodings are written out by hand by the small assembler below
(`Assembler`), which knows exactly the instructions above: register-immediate moves and adds, a load and
a store through a base register, dec, a conditional jump back to a label, and hlt.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PAGE_SHIFT = 12
STORE_VALUE = 0x5A5A5A5A


class Reg(IntEnum):
    """The 32-bit general registers, numbered as ModRM and the +r opcodes encode them."""

    EAX = 0
    ECX = 1
    EDX = 2
    EBX = 3
    ESP = 4
    EBP = 5
    ESI = 6
    EDI = 7


def _imm32(value: int) -> bytes:
    if not -(1 << 31) <= value < 1 << 32:
        raise ValueError(f"{value:#x} does not fit in 32 bits")
    return struct.pack("<I", value & 0xFFFFFFFF)


def _modrm(mod: int, reg: int, rm: int) -> int:
    return (mod << 6) | (reg << 3) | rm


class Assembler:
    """Emits 32-bit code (operand and address size 32, as a code segment with D=1 runs it), or with
    `long_mode` the same instructions for a 64-bit code segment (L=1)."""

    def __init__(self, *, long_mode: bool = False) -> None:
        self.long_mode = long_mode
        self.code = bytearray()
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"label {name!r} is defined twice")
        self.labels[name] = len(self.code)

    def mov_imm(self, dst: Reg, value: int) -> None:
        """mov r32, imm32: B8+r id."""
        self.code += bytes([0xB8 + dst]) + _imm32(value)

    def add_imm(self, dst: Reg, value: int) -> None:
        """add r/m32, imm32: 81 /0 id, register direct (mod 11)."""
        self.code += bytes([0x81, _modrm(0b11, 0, dst)]) + _imm32(value)

    def _indirect(self, opcode: int, reg: Reg, base: Reg) -> None:
        # mod 00 with rm = ESP means a SIB byte follows and rm = EBP means disp32: neither is a plain base.
        if base in (Reg.ESP, Reg.EBP):
            raise ValueError(f"[{base.name.lower()}] needs a SIB byte or a displacement")
        self.code += bytes([opcode, _modrm(0b00, reg, base)])

    def store(self, base: Reg, src: Reg) -> None:
        """mov [base], src: 89 /r."""
        self._indirect(0x89, src, base)

    def load(self, dst: Reg, base: Reg) -> None:
        """mov dst, [base]: 8B /r."""
        self._indirect(0x8B, dst, base)

    def dec(self, reg: Reg) -> None:
        """dec r32: 48+r (the one-byte form, which 32-bit mode has), or FF /1 in 64-bit mode, where 48+r
        is a REX prefix."""
        if self.long_mode:
            self.code += bytes([0xFF, _modrm(0b11, 1, reg)])
        else:
            self.code += bytes([0x48 + reg])

    def jnz(self, label: str) -> None:
        """jnz to an already defined label: 75 rel8 when the distance fits, else 0F 85 rel32."""
        target = self.labels[label]
        short = target - (len(self.code) + 2)
        if -128 <= short <= 127:
            self.code += bytes([0x75, short & 0xFF])
        else:
            self.code += bytes([0x0F, 0x85]) + struct.pack("<i", target - (len(self.code) + 6))

    def hlt(self) -> None:
        """hlt: F4."""
        self.code.append(0xF4)

    def out_al(self, port: int) -> None:
        """out imm8, al: E6 ib. A port no device claims: KVM_EXIT_IO to userspace."""
        if not 0 <= port <= 0xFF:
            raise ValueError(f"port {port:#x} does not fit in a byte")
        self.code += bytes([0xE6, port])

    def mov_imm64(self, dst: Reg, value: int) -> None:
        """mov r64, imm64: REX.W B8+r io (64-bit mode only)."""
        if not self.long_mode:
            raise ValueError("a 64-bit immediate needs 64-bit mode")
        self.code += bytes([0x48, 0xB8 + dst]) + struct.pack("<Q", value & (1 << 64) - 1)

    def store_imm32(self, base: Reg, value: int) -> None:
        """mov dword [base], imm32: C7 /0 id."""
        self._indirect(0xC7, Reg.EAX, base)
        self.code += _imm32(value)

    def store64(self, base: Reg, src: Reg) -> None:
        """mov qword [base], src: REX.W 89 /r (64-bit mode only)."""
        if not self.long_mode:
            raise ValueError("a 64-bit store needs 64-bit mode")
        self.code.append(0x48)
        self._indirect(0x89, src, base)

    def mov_to_cr3(self, src: Reg) -> None:
        """mov cr3, r64: 0F 22 /r, register direct, reg field 3 (CR3)."""
        self.code += bytes([0x0F, 0x22, _modrm(0b11, 3, src)])

    def invlpg(self, base: Reg) -> None:
        """invlpg [base]: 0F 01 /7."""
        if base in (Reg.ESP, Reg.EBP):
            raise ValueError(f"[{base.name.lower()}] needs a SIB byte or a displacement")
        self.code += bytes([0x0F, 0x01, _modrm(0b00, 7, base)])

    def bytes(self) -> bytes:
        return bytes(self.code)


# The port the native guest's program ends on.
DONE_PORT = 0xE9


def access_program(gfn: int, count: int, stride: int, write: bool, *, native: bool = False) -> bytes:
    """The code for `count` reads or writes at gfn, gfn + stride, ..., one 32-bit access per page, then hlt
    (or, `native`, the 64-bit program that ends with `out DONE_PORT, al`).

    Every address must be below 4 GiB (the guest's addresses are 32 bits); a one-access step ignores the
    stride.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    step = 0 if count == 1 else stride
    last = gfn + (count - 1) * step
    if gfn < 0 or step < 0 or last >= 1 << (32 - PAGE_SHIFT):
        raise ValueError(f"gfns {gfn:#x}..{last:#x} are not all below 4 GiB")
    asm = Assembler(long_mode=native)
    asm.mov_imm(Reg.ESI, gfn << PAGE_SHIFT)
    asm.mov_imm(Reg.ECX, count)
    asm.mov_imm(Reg.EAX, STORE_VALUE)
    asm.label("again")
    if write:
        asm.store(Reg.ESI, Reg.EAX)
    else:
        asm.load(Reg.EAX, Reg.ESI)
    asm.add_imm(Reg.ESI, step << PAGE_SHIFT)
    asm.dec(Reg.ECX)
    asm.jnz("again")
    if native:
        asm.out_al(DONE_PORT)
    else:
        asm.hlt()
    return asm.bytes()


# The shadow-paging guest's programs (`live.shadow_guest`): 64-bit addresses anywhere below 2^47, each
# access spelled out so that every store writes the value its page already holds at its first dword.
# A plain store into a page that is, or later becomes, one of the guest's page tables then changes no
# guest PTE: entry 0 is rewritten as it was, as the model's store does.


def _done(asm: Assembler) -> bytes:
    asm.out_al(DONE_PORT)
    return asm.bytes()


def shadow_access_program(accesses: list[tuple[int, int | None]]) -> bytes:
    """One access per (gva, value): a load when value is None, else a 32-bit store of value; then the
    end (`out DONE_PORT, al`)."""
    asm = Assembler(long_mode=True)
    for gva, value in accesses:
        asm.mov_imm64(Reg.ESI, gva)
        if value is None:
            asm.load(Reg.EAX, Reg.ESI)
        else:
            asm.store_imm32(Reg.ESI, value)
    return _done(asm)


# Accesses per program: each takes at most 16 bytes (a 10-byte move and a 6-byte store), and the end
# two more, well inside the code page.
SHADOW_ACCESSES_PER_RUN = 200


def gpte_store_program(gva: int, pte: int) -> bytes:
    """The guest stores the 64-bit `pte` at `gva` (an entry of one of its page tables)."""
    asm = Assembler(long_mode=True)
    asm.mov_imm64(Reg.ESI, gva)
    asm.mov_imm64(Reg.EAX, pte)
    asm.store64(Reg.ESI, Reg.EAX)
    return _done(asm)


def invlpg_program(gva: int) -> bytes:
    """INVLPG [gva]."""
    asm = Assembler(long_mode=True)
    asm.mov_imm64(Reg.ESI, gva)
    asm.invlpg(Reg.ESI)
    return _done(asm)


def set_cr3_program(cr3: int) -> bytes:
    """MOV CR3 to the physical address `cr3` (a PML4), PCID 0, flushing the guest's TLB."""
    asm = Assembler(long_mode=True)
    asm.mov_imm64(Reg.EAX, cr3)
    asm.mov_to_cr3(Reg.EAX)
    return _done(asm)
