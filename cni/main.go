// vethguard-cni, the static build of the chained CNI plugin for nodes (deploy/ installs it into
// /opt/cni/bin). It does what controller/cni/plugin.py does, with the Go standard library only,
// so a node needs nothing but the kernel: on ADD it attaches the programs the agent pinned to the
// pod's host-side veth and writes the endpoint PENDING (unless the agent wrote it first), before
// the pod's containers start. tests/kernel/test_cni.py runs both builds through the same cases.
//
// Map layouts (bpf/lib/structs.h): endpoint_info {u32 ep_id, identity, flags; be32 ipv4;
// u8 ipv6[16]; u32 slot; u32 tier_profile} (40 bytes), local_key {u8 addr[16]; u8 family; u8 pad[3]} -> u32 ifindex.
// With "tcAttach": "tcx" the programs are attached as tcx links (cni/tcx.go); else as the
// agent's tc filters (controller/datapath/attach.py): clsact, handle 1, prio 10,
// protocol all, direct-action, names vethguard-from-pod / vethguard-to-pod.
// A clsact this plugin creates is recorded in the node's clsact ledger, <stateDir>/clsact-<node>
// (controller/datapath/ledger.py): one "<ifindex> <ifname>\n" line, one O_APPEND write.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"unsafe"
)

const (
	defaultPinRoot   = "/sys/fs/bpf/vethguard"
	defaultStateDir  = "/run/vethguard"
	errIncompatible  = 1
	errInvalidConfig = 7
	errNotReady      = 100 // the agent has not pinned its programs on this node yet
	errAttach        = 101

	epFPending = 1 << 3

	bpfMapUpdateElem = 2
	bpfObjGet        = 7
	bpfNoExist       = 1

	rtmNewQdisc   = 36
	rtmNewTfilter = 44
	rtmGetTfilter = 46
	nlmFDump      = 0x300
	nlmsgDone     = 3
	nlmFRequest   = 0x1
	nlmFAck       = 0x4
	nlmFReplace   = 0x100
	nlmFExcl      = 0x200
	nlmFCreate    = 0x400
	nlmsgError    = 2

	tcaKind             = 1
	tcaOptions          = 2
	tcaBpfClassid       = 3
	tcaBpfFd            = 6
	tcaBpfName          = 7
	tcaBpfFlags         = 8
	tcaBpfFlagActDirect = 1
	tcHClsact           = 0xFFFFFFF1
	clsactHandle        = 0xFFFF0000
	parentIngress       = 0xFFFFFFF2
	parentEgress        = 0xFFFFFFF3
	filterHandle        = 1
	filterPrio          = 10
	ethPAll             = 0x0003
)

var supportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

type cniError struct {
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *cniError) Error() string { return e.Msg }

type netConf struct {
	CniVersion string          `json:"cniVersion"`
	PinRoot    string          `json:"pinRoot"`
	NodeName   string          `json:"nodeName"`
	StateDir   string          `json:"stateDir"`
	TcAttach   string          `json:"tcAttach"`
	PrevResult json.RawMessage `json:"prevResult"`
}

type prevResult struct {
	Interfaces []struct {
		Name    string `json:"name"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

func main() {
	stdin, _ := io.ReadAll(os.Stdin)
	version := versionOf(stdin)
	out, err := handle(os.Getenv("CNI_COMMAND"), stdin)
	if err != nil {
		var ce *cniError
		if !errors.As(err, &ce) {
			ce = &cniError{Code: errAttach, Msg: "vethguard-cni: " + err.Error()}
		}
		body, _ := json.Marshal(struct {
			CniVersion string `json:"cniVersion"`
			*cniError
		}{version, ce})
		fmt.Println(string(body))
		os.Exit(1)
	}
	if out != nil {
		fmt.Println(string(out))
	}
}

func versionOf(stdin []byte) string {
	var c struct {
		CniVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(stdin, &c) != nil || c.CniVersion == "" {
		return "1.0.0"
	}
	return c.CniVersion
}

func handle(command string, stdin []byte) ([]byte, error) {
	switch command {
	case "VERSION":
		return json.Marshal(map[string]interface{}{"cniVersion": versionOf(stdin), "supportedVersions": supportedVersions})
	case "ADD", "CHECK", "DEL", "GC", "STATUS":
	default:
		return nil, &cniError{Code: errInvalidConfig, Msg: fmt.Sprintf("CNI_COMMAND %q is not one of ADD, DEL, CHECK, VERSION", command)}
	}
	var conf netConf
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return nil, &cniError{Code: errInvalidConfig, Msg: "network configuration is not JSON: " + err.Error()}
	}
	if conf.CniVersion == "" {
		conf.CniVersion = "1.0.0"
	}
	if !supported(conf.CniVersion) {
		return nil, &cniError{Code: errIncompatible, Msg: fmt.Sprintf("cniVersion %q is not supported", conf.CniVersion)}
	}
	switch command {
	case "ADD":
		return add(&conf)
	case "CHECK":
		return nil, check(&conf)
	}
	return nil, nil // DEL, GC, STATUS: nothing of ours to undo or report
}

func supported(v string) bool {
	for _, s := range supportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

func pinDir(conf *netConf) (string, error) {
	root := conf.PinRoot
	if root == "" {
		root = defaultPinRoot
	}
	if conf.NodeName != "" {
		return filepath.Join(root, conf.NodeName), nil
	}
	matches, _ := filepath.Glob(filepath.Join(root, "*", "prog_from_pod"))
	if len(matches) != 1 {
		code, why := errInvalidConfig, fmt.Sprintf("%d nodes; set nodeName in the network configuration", len(matches))
		if len(matches) == 0 {
			code, why = errNotReady, "none yet (the vethguard agent has not started on this node)"
		}
		return "", &cniError{Code: code, Msg: fmt.Sprintf("cannot tell this node's pins under %s: %s", root, why)}
	}
	return filepath.Dir(matches[0]), nil
}

func add(conf *netConf) ([]byte, error) {
	if len(conf.PrevResult) == 0 {
		return nil, &cniError{Code: errInvalidConfig, Msg: "no prevResult: vethguard-cni runs chained after the main plugin"}
	}
	var prev prevResult
	if err := json.Unmarshal(conf.PrevResult, &prev); err != nil {
		return nil, &cniError{Code: errInvalidConfig, Msg: "prevResult: " + err.Error()}
	}
	pins, err := pinDir(conf)
	if err != nil {
		return nil, err
	}
	ifindex, err := hostInterface(&prev)
	if err != nil {
		return nil, err
	}
	var v4, v6 net.IP
	for _, entry := range prev.IPs {
		ip, _, err := net.ParseCIDR(entry.Address)
		if err != nil {
			return nil, &cniError{Code: errInvalidConfig, Msg: fmt.Sprintf("prevResult.ips: bad address %q", entry.Address)}
		}
		if ip.To4() != nil && v4 == nil {
			v4 = ip.To4()
		} else if ip.To4() == nil && v6 == nil {
			v6 = ip.To16()
		}
	}
	progs := map[uint32]string{parentIngress: "from_pod", parentEgress: "to_pod"}
	fds := map[uint32]int{}
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	for parent, name := range progs {
		fd, err := objGet(filepath.Join(pins, "prog_"+name))
		if err != nil {
			return nil, &cniError{Code: errNotReady, Msg: fmt.Sprintf("no pinned program %s: %v", filepath.Join(pins, "prog_"+name), err),
				Details: "the vethguard agent has not started on this node yet"}
		}
		fds[parent] = fd
	}
	if err := writePendingEndpoint(pins, ifindex, v4, v6); err != nil {
		return nil, err
	}
	tcx, err := useTcx(conf.TcAttach)
	if err != nil {
		return nil, err
	}
	if tcx {
		if err := attachTcx(pins, ifindex, fds); err != nil {
			return nil, &cniError{Code: errAttach, Msg: "cannot attach the vethguard programs: " + err.Error()}
		}
		return resultOf(conf)
	}
	created, err := attach(ifindex, fds)
	if created {
		stateDir := conf.StateDir
		if stateDir == "" {
			stateDir = defaultStateDir
		}
		recordClsact(filepath.Join(stateDir, "clsact-"+filepath.Base(pins)), ifindex)
	}
	if err != nil {
		return nil, &cniError{Code: errAttach, Msg: "cannot attach the vethguard programs: " + err.Error()}
	}
	return resultOf(conf)
}

func resultOf(conf *netConf) ([]byte, error) {
	var result map[string]interface{}
	if err := json.Unmarshal(conf.PrevResult, &result); err != nil {
		return nil, err
	}
	result["cniVersion"] = conf.CniVersion
	return json.Marshal(result)
}

// recordClsact appends "<ifindex> <ifname>" to the clsact ledger. A failure is reported on stderr
// only: the clsact exists either way, and the pod must not fail because of the ledger.
func recordClsact(path string, ifindex int) {
	name := ""
	if link, err := net.InterfaceByIndex(ifindex); err == nil {
		name = link.Name
	}
	err := os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil && name == "" {
		err = fmt.Errorf("no interface with ifindex %d", ifindex)
	}
	if err == nil {
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			_, err = f.Write([]byte(fmt.Sprintf("%d %s\n", ifindex, name)))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vethguard-cni: cannot record the clsact of ifindex %d in %s: %v\n", ifindex, path, err)
	}
}

// hostInterface is the ifindex of prevResult's interface without a sandbox: the pod's host end.
func hostInterface(prev *prevResult) (int, error) {
	for _, iface := range prev.Interfaces {
		if iface.Sandbox == "" && iface.Name != "" {
			if link, err := net.InterfaceByName(iface.Name); err == nil {
				return link.Index, nil
			}
		}
	}
	return 0, &cniError{Code: errInvalidConfig, Msg: "prevResult names no host-side interface",
		Details: "the main plugin must list the host end of the pod's veth (no sandbox)"}
}

func check(conf *netConf) error {
	var prev prevResult
	if len(conf.PrevResult) == 0 || json.Unmarshal(conf.PrevResult, &prev) != nil {
		return &cniError{Code: errInvalidConfig, Msg: "no prevResult to check"}
	}
	ifindex, err := hostInterface(&prev)
	if err != nil {
		return err
	}
	tcx, err := useTcx(conf.TcAttach)
	if err != nil {
		return err
	}
	if tcx {
		pins, err := pinDir(conf)
		if err != nil {
			return err
		}
		if !tcxAttached(pins, ifindex) {
			return &cniError{Code: errAttach, Msg: fmt.Sprintf("the vethguard programs are missing on ifindex %d", ifindex)}
		}
		return nil
	}
	for _, parent := range []uint32{parentIngress, parentEgress} {
		found, err := ourFilter(ifindex, parent)
		if err != nil || !found {
			return &cniError{Code: errAttach, Msg: fmt.Sprintf("the vethguard programs are missing on ifindex %d", ifindex)}
		}
	}
	return nil
}

func writePendingEndpoint(pins string, ifindex int, v4, v6 net.IP) error {
	endpoints, err := objGet(filepath.Join(pins, "vg_endpoints"))
	if err != nil {
		return &cniError{Code: errNotReady, Msg: "no pinned vg_endpoints: " + err.Error()}
	}
	defer syscall.Close(endpoints)
	key := make([]byte, 4)
	binary.LittleEndian.PutUint32(key, uint32(ifindex))
	value := make([]byte, 40)
	binary.LittleEndian.PutUint32(value[0:], uint32(ifindex))
	binary.LittleEndian.PutUint32(value[8:], epFPending)
	copy(value[12:16], v4)
	copy(value[16:32], v6)
	if err := mapUpdate(endpoints, key, value, bpfNoExist); err != nil && !errors.Is(err, syscall.EEXIST) {
		return &cniError{Code: errAttach, Msg: "cannot write the endpoint entry: " + err.Error()}
	}
	local, err := objGet(filepath.Join(pins, "vg_local"))
	if err != nil {
		return &cniError{Code: errNotReady, Msg: "no pinned vg_local: " + err.Error()}
	}
	defer syscall.Close(local)
	for family, ip := range map[byte]net.IP{4: v4, 6: v6} {
		if ip == nil {
			continue
		}
		k := make([]byte, 20)
		copy(k, ip)
		k[16] = family
		v := make([]byte, 4)
		binary.LittleEndian.PutUint32(v, uint32(ifindex))
		if err := mapUpdate(local, k, v, 0); err != nil {
			return &cniError{Code: errAttach, Msg: "cannot write vg_local: " + err.Error()}
		}
	}
	return nil
}

// -- bpf(2) ------------------------------------------------------------------------------------

func bpf(cmd uintptr, attr unsafe.Pointer, size uintptr) (uintptr, error) {
	r, _, errno := syscall.Syscall(sysBPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

func objGet(path string) (int, error) {
	name, err := syscall.BytePtrFromString(path)
	if err != nil {
		return -1, err
	}
	attr := struct {
		pathname uint64
		fd       uint32
		flags    uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(name)))}
	fd, err := bpf(bpfObjGet, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(name)
	return int(fd), err
}

func mapUpdate(fd int, key, value []byte, flags uint64) error {
	attr := struct {
		fd    uint32
		pad   uint32
		key   uint64
		value uint64
		flags uint64
	}{fd: uint32(fd), key: uint64(uintptr(unsafe.Pointer(&key[0]))), value: uint64(uintptr(unsafe.Pointer(&value[0]))), flags: flags}
	_, err := bpf(bpfMapUpdateElem, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	return err
}

// -- rtnetlink -----------------------------------------------------------------------------------

func rtattr(kind uint16, payload []byte) []byte {
	n := 4 + len(payload)
	out := make([]byte, (n+3)&^3)
	binary.LittleEndian.PutUint16(out[0:], uint16(n))
	binary.LittleEndian.PutUint16(out[2:], kind)
	copy(out[4:], payload)
	return out
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	return b
}

func asciiz(s string) []byte { return append([]byte(s), 0) }

func tcmsg(ifindex int, handle, parent, info uint32) []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[4:], uint32(ifindex))
	binary.LittleEndian.PutUint32(b[8:], handle)
	binary.LittleEndian.PutUint32(b[12:], parent)
	binary.LittleEndian.PutUint32(b[16:], info)
	return b
}

func request(sock int, seq uint32, kind, flags uint16, body []byte) error {
	msg := make([]byte, 16+len(body))
	binary.LittleEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.LittleEndian.PutUint16(msg[4:], kind)
	binary.LittleEndian.PutUint16(msg[6:], flags|nlmFRequest|nlmFAck)
	binary.LittleEndian.PutUint32(msg[8:], seq)
	copy(msg[16:], body)
	if err := syscall.Sendto(sock, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for {
		n, _, err := syscall.Recvfrom(sock, buf, 0)
		if err != nil {
			return err
		}
		for off := 0; off+16 <= n; {
			length := int(binary.LittleEndian.Uint32(buf[off:]))
			if length < 16 || off+length > n {
				break
			}
			if binary.LittleEndian.Uint16(buf[off+4:]) == nlmsgError && binary.LittleEndian.Uint32(buf[off+8:]) == seq {
				code := int32(binary.LittleEndian.Uint32(buf[off+16:]))
				if code == 0 {
					return nil
				}
				return syscall.Errno(-code)
			}
			off += (length + 3) &^ 3
		}
	}
}

// attrs splits a run of rtattrs into type -> payload.
func attrs(b []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	for len(b) >= 4 {
		n := int(binary.LittleEndian.Uint16(b[0:]))
		if n < 4 || n > len(b) {
			break
		}
		out[binary.LittleEndian.Uint16(b[2:])&0x3fff] = b[4:n]
		step := (n + 3) &^ 3
		if step > len(b) {
			break
		}
		b = b[step:]
	}
	return out
}

// ourFilter dumps the filters of one clsact hook and looks for ours by name.
func ourFilter(ifindex int, parent uint32) (bool, error) {
	sock, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return false, err
	}
	defer syscall.Close(sock)
	body := tcmsg(ifindex, 0, parent, 0)
	msg := make([]byte, 16+len(body))
	binary.LittleEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.LittleEndian.PutUint16(msg[4:], rtmGetTfilter)
	binary.LittleEndian.PutUint16(msg[6:], nlmFRequest|nlmFDump)
	binary.LittleEndian.PutUint32(msg[8:], 1)
	copy(msg[16:], body)
	if err := syscall.Sendto(sock, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return false, err
	}
	want := map[uint32]string{parentIngress: "vethguard-from-pod", parentEgress: "vethguard-to-pod"}[parent]
	found := false
	buf := make([]byte, 65536)
	for {
		n, _, err := syscall.Recvfrom(sock, buf, 0)
		if err != nil {
			return false, err
		}
		for off := 0; off+16 <= n; {
			length := int(binary.LittleEndian.Uint32(buf[off:]))
			if length < 16 || off+length > n {
				break
			}
			switch binary.LittleEndian.Uint16(buf[off+4:]) {
			case nlmsgDone:
				return found, nil
			case nlmsgError:
				if code := int32(binary.LittleEndian.Uint32(buf[off+16:])); code != 0 {
					return false, syscall.Errno(-code)
				}
				return found, nil
			case rtmNewTfilter:
				if length > 36 {
					a := attrs(buf[off+36 : off+length])
					if string(a[tcaKind]) == "bpf\x00" && string(attrs(a[tcaOptions])[tcaBpfName]) == want+"\x00" {
						found = true
					}
				}
			}
			off += (length + 3) &^ 3
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// attach adds clsact when absent (created: this call added it, not EEXIST) and replaces our filters.
func attach(ifindex int, fds map[uint32]int) (created bool, err error) {
	sock, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return false, err
	}
	defer syscall.Close(sock)
	if err := syscall.Bind(sock, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return false, err
	}
	clsact := append(tcmsg(ifindex, clsactHandle, tcHClsact, 0), rtattr(tcaKind, asciiz("clsact"))...)
	if err := request(sock, 1, rtmNewQdisc, nlmFCreate|nlmFExcl, clsact); err == nil {
		created = true
	} else if !errors.Is(err, syscall.EEXIST) {
		return false, fmt.Errorf("clsact on ifindex %d: %w", ifindex, err)
	}
	names := map[uint32]string{parentIngress: "vethguard-from-pod", parentEgress: "vethguard-to-pod"}
	seq := uint32(2)
	for _, parent := range []uint32{parentIngress, parentEgress} {
		options := append(rtattr(tcaBpfClassid, u32(1)), rtattr(tcaBpfFd, u32(uint32(fds[parent])))...)
		options = append(options, rtattr(tcaBpfName, asciiz(names[parent]))...)
		options = append(options, rtattr(tcaBpfFlags, u32(tcaBpfFlagActDirect))...)
		body := tcmsg(ifindex, filterHandle, parent, filterPrio<<16|uint32(htons(ethPAll)))
		body = append(body, rtattr(tcaKind, asciiz("bpf"))...)
		body = append(body, rtattr(tcaOptions, options)...)
		if err := request(sock, seq, rtmNewTfilter, nlmFCreate|nlmFReplace, body); err != nil {
			return created, fmt.Errorf("%s filter on ifindex %d: %w", names[parent], ifindex, err)
		}
		seq++
	}
	return created, nil
}
