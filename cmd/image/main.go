// Command image writes lastgasp's container image as an OCI layout, with
// no container engine (make image):
//
//	image -binary bin/lastgasp -tag ghcr.io/lastgasp/lastgasp:dev -o bin/image
//
// Push it with crane push bin/image REF, or skopeo copy oci:bin/image
// docker://REF.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/lastgasp/lastgasp/internal/image"
)

func main() {
	binary := flag.String("binary", "bin/lastgasp", "the static lastgasp binary (CGO_ENABLED=0)")
	tag := flag.String("tag", image.DefaultTag, "the image's reference (the manifests' image:)")
	out := flag.String("o", "bin/image", "the OCI layout directory to write (replaced)")
	flag.Parse()
	digest, err := image.Build(*binary, *tag, *out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s@%s in %s\n", *tag, *tag, digest, *out)
}
