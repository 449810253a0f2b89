// Command buildguest builds corral's tiny test guest (busybox initramfs for
// the newest Debian cloud kernel) with testenv.BuildGuest and prints the
// kernel and initrd paths, for the demo and for debugging by hand
// (scripts/guest/).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/minet/corral/internal/testenv"
)

func main() {
	out := flag.String("out", "", "directory receiving initrd.cpio.gz (required)")
	script := flag.String("init-script", "", "sh lines run by /init after GUEST-READY (default: count loop)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "buildguest: -out is required")
		os.Exit(2)
	}
	kernel, initrd, err := testenv.BuildGuest(*out, testenv.GuestOptions{InitScript: *script})
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildguest:", err)
		os.Exit(1)
	}
	fmt.Printf("KERNEL=%s\nINITRD=%s\n", kernel, initrd)
}
