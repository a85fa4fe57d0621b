"""The simulator core: a pure, step-able model of the KVM x86 TDP MMU."""
