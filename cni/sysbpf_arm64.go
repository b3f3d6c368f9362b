// bpf(2) on arm64 (the Go 1.19 syscall package has no SYS_BPF).
package main

const sysBPF = 280
