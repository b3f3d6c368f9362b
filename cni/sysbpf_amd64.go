// bpf(2) on x86-64 (the Go 1.19 syscall package has no SYS_BPF).
package main

const sysBPF = 321
