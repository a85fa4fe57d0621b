"""The live kernel as an oracle: a scenario's guest accesses and dirty-log steps run on a real KVM VM.

Pure Python over /dev/kvm (`fcntl`-style ioctls through ctypes, anonymous mmaps, hand-assembled guest
code), so it needs no compiler and no dependency. Importing it never touches the device: a machine
without KVM imports it fine, and `live.report.availability()` says why it cannot run there.

- `kvm_abi`: the ioctl numbers, structures and constants of the KVM userspace ABI;
- `guest_code`: the x86 machine code an access step becomes;
- `vm`: one VM (memslots, vCPUs, the dirty-log ioctls and the dirty ring), released as a context manager;
- `backend`: a scenario step by step on a VM, and what it refuses (`run_on_kernel`, `refusal`);
- `report`: contract §3's `sptelab real` result, comparing the kernel with the engine's presets.

`engine` never imports this package.
"""
