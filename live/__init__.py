"""The live kernel: a scenario's guest accesses and dirty-log steps run on a real KVM VM, and read back.

Pure Python over /dev/kvm (`fcntl`-style ioctls through ctypes, anonymous mmaps, hand-assembled guest
code), so it needs no compiler and no dependency. Importing it never touches the device: a machine
without KVM imports it fine, and `live.report.availability()` says why it cannot run there.

- `kvm_abi`: the ioctl numbers, structures and constants of the KVM userspace ABI;
- `guest_code`: the x86 machine code an access step becomes;
- `vm`: one VM (memslots, vCPUs, the dirty-log ioctls and the dirty ring), released as a context manager;
- `stats`: the VM's and vCPUs' binary statistics (KVM_GET_STATS_FD), snapshots and their differences;
- `shadow_guest`: a shadow-paging scenario's own page tables laid into its memory, with the entry that
  maps the live VM's code from its system slot;
- `shadow_run`: that guest's reads, writes, PTE stores, INVLPG and MOV CR3 as its own instructions,
  refusing an access its tables would fault;
- `shadow_compare`: such a run against a preset step by step (dirty logs, leaves per level, W bits,
  faults, emulated stores, unsync pages), the one known difference of `kvm_pvm` tolerated by name;
- `backend`: a scenario step by step on a VM, its statistics around each step, and what it refuses
  (`run_on_kernel`, `run_with_stats`, `refusal`);
- `execution`: from the statistics, whether the kernel ran the guest through its MMU or emulated it, and
  so what a run can check;
- `report`: contract §3's `sptelab real` result, the kernel beside the engine's emulated guest (the
  oracle of its dirty-log ioctls) and the presets, with the `live` object saying what was checked.

`engine` never imports this package.
"""
