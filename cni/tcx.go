// tcx links: how the agent attaches the pod programs where the kernel has tcx (6.6+;
// controller/datapath/tcx.py). Each link is pinned at
// <pins>/links/<netns inode>-<ifindex>-<ingress|egress> so it outlives this process; a pin left by a deleted interface whose ifindex was reused is
// replaced, and a link already there (the agent's, or an earlier ADD's) gets the program swapped
// in place. New links go first on the hook (BPF_F_BEFORE). Chosen by "tcAttach": "tcx" in the
// configuration (or VETHGUARD_TC_ATTACH=tcx), as the agent's VETHGUARD_TC_ATTACH.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"
)

const (
	bpfObjPin         = 6
	bpfObjGetInfoByFd = 15
	bpfProgQuery      = 16
	bpfLinkCreate     = 28
	bpfLinkUpdate     = 29
	bpfLinkDetach     = 34
	bpfTcxIngress     = 46
	bpfTcxEgress      = 47
	bpfLinkTypeTcx    = 11
	bpfFBefore        = 1 << 3
	attachEnv         = "VETHGUARD_TC_ATTACH"
	linksDir          = "links"
)

var tcxHooks = []struct {
	parent     uint32
	attachType uint32
	file       string
}{{parentIngress, bpfTcxIngress, "ingress"}, {parentEgress, bpfTcxEgress, "egress"}}

// useTcx: the configuration's tcAttach, else the environment's VETHGUARD_TC_ATTACH, else clsact
// (the default, as for the agent). tcx on a kernel without it is an error, not a fallback: a
// read-only query of loopback's tcx ingress tells.
func useTcx(wanted string) (bool, error) {
	source := "tcAttach"
	if wanted == "" {
		source, wanted = attachEnv, os.Getenv(attachEnv)
	}
	switch strings.ToLower(strings.TrimSpace(wanted)) {
	case "tcx":
		attr := struct {
			ifindex, attachType, queryFlags, attachFlags uint32
			progIDs                                      uint64
			count, pad                                   uint32
			rest                                         [4]uint64
		}{ifindex: 1, attachType: bpfTcxIngress}
		if _, err := bpf(bpfProgQuery, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
			return false, &cniError{Code: errInvalidConfig, Msg: fmt.Sprintf("%s=tcx: this kernel has no tcx hooks (6.6 or later has)", source)}
		}
		return true, nil
	case "clsact", "":
		return false, nil
	default:
		return false, &cniError{Code: errInvalidConfig, Msg: fmt.Sprintf("%s=%q: expected tcx or clsact", source, wanted)}
	}
}

type linkInfo struct {
	kind, id, progID, pad, ifindex, attachType uint32
	rest                                       [2]uint64
}

// objInfo fills info (a prefix of struct bpf_link_info or bpf_prog_info) for a link or program fd.
func objInfo(fd int, info unsafe.Pointer, size uintptr) error {
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{fd: uint32(fd), infoLen: uint32(size), info: uint64(uintptr(info))}
	_, err := bpf(bpfObjGetInfoByFd, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return err
}

func getLinkInfo(fd int) (linkInfo, error) {
	var info linkInfo
	err := objInfo(fd, unsafe.Pointer(&info), unsafe.Sizeof(info))
	runtime.KeepAlive(&info)
	return info, err
}

func progID(fd int) (uint32, error) {
	var info struct {
		kind, id uint32
		rest     [26]uint64
	}
	err := objInfo(fd, unsafe.Pointer(&info), unsafe.Sizeof(info))
	runtime.KeepAlive(&info)
	return info.id, err
}

func objPin(fd int, path string) error {
	name, err := syscall.BytePtrFromString(path)
	if err != nil {
		return err
	}
	attr := struct {
		pathname uint64
		fd       uint32
		flags    uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(name))), fd: uint32(fd)}
	_, err = bpf(bpfObjPin, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(name)
	return err
}

// currentLink opens the pinned link of this hook if it is alive on ifindex; a stale pin is removed.
func currentLink(pin string, ifindex int, attachType uint32) (int, bool) {
	fd, err := objGet(pin)
	if err != nil {
		return -1, false
	}
	info, err := getLinkInfo(fd)
	if err == nil && info.kind == bpfLinkTypeTcx && int(info.ifindex) == ifindex && info.attachType == attachType {
		return fd, true
	}
	syscall.Close(fd)
	os.Remove(pin)
	return -1, false
}

// linkPin: <pins>/links/<netns inode>-<ifindex>-<hook> (an ifindex is unique only within a netns).
func linkPin(pins string, ifindex int, file string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", err
	}
	return filepath.Join(pins, linksDir, fmt.Sprintf("%d-%d-%s", st.Ino, ifindex, file)), nil
}

func attachTcxHook(pins string, ifindex int, parent, attachType uint32, file string, progFd int) error {
	runtime.LockOSThread() // the thread's netns names the pin
	defer runtime.UnlockOSThread()
	pin, err := linkPin(pins, ifindex, file)
	if err != nil {
		return err
	}
	for try := 0; try < 3; try++ {
		if fd, ok := currentLink(pin, ifindex, attachType); ok {
			defer syscall.Close(fd)
			info, err := getLinkInfo(fd)
			want, perr := progID(progFd)
			if err == nil {
				err = perr
			}
			if err != nil {
				return err
			}
			if info.progID == want {
				return nil
			}
			attr := struct{ linkFd, newProgFd, flags, oldProgFd uint32 }{linkFd: uint32(fd), newProgFd: uint32(progFd)}
			_, err = bpf(bpfLinkUpdate, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
			return err
		}
		attr := struct {
			progFd, ifindex, attachType, flags, relative, pad uint32
			expectedRevision                                  uint64
		}{progFd: uint32(progFd), ifindex: uint32(ifindex), attachType: attachType, flags: bpfFBefore}
		r, err := bpf(bpfLinkCreate, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		if err != nil {
			return fmt.Errorf("tcx %s link on ifindex %d: %w", file, ifindex, err)
		}
		link := int(r)
		if err := os.MkdirAll(filepath.Dir(pin), 0o755); err != nil {
			syscall.Close(link)
			return err
		}
		err = objPin(link, pin)
		if err != nil {
			detach := struct{ linkFd uint32 }{uint32(link)}
			bpf(bpfLinkDetach, unsafe.Pointer(&detach), unsafe.Sizeof(detach)) // never ours twice
		}
		syscall.Close(link)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EEXIST) { // EEXIST: the agent pinned one first: update that
			return fmt.Errorf("pin %s: %w", pin, err)
		}
	}
	return fmt.Errorf("ifindex %d: the %s link keeps changing", ifindex, file)
}

func attachTcx(pins string, ifindex int, fds map[uint32]int) error {
	for _, h := range tcxHooks {
		if err := attachTcxHook(pins, ifindex, h.parent, h.attachType, h.file, fds[h.parent]); err != nil {
			return err
		}
	}
	return nil
}

// tcxAttached: both hooks' pinned links are alive on ifindex.
func tcxAttached(pins string, ifindex int) bool {
	for _, h := range tcxHooks {
		pin, err := linkPin(pins, ifindex, h.file)
		if err != nil {
			return false
		}
		fd, ok := currentLink(pin, ifindex, h.attachType)
		if !ok {
			return false
		}
		syscall.Close(fd)
	}
	return true
}
