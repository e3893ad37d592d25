// Package image writes lastgasp's container image without a container
// engine: an OCI image layout (a directory that crane, skopeo or podman
// push, or a registry mirror loads) holding one image, FROM scratch, whose
// only layer is the static lastgasp binary at /usr/local/bin/lastgasp,
// owned by root, mode 0755, dated 0 so that the same binary gives the
// same image digest.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultTag is the image's reference that make image writes and deploy/'s
// manifests name.
const DefaultTag = "ghcr.io/lastgasp/lastgasp:dev"

// BinaryPath is where the binary is in the image, the manifests' command.
const BinaryPath = "/usr/local/bin/lastgasp"

// Build makes the image from the static binary at binary, for linux/amd64
// (the BPF object is little-endian x86), tagged ref (the
// org.opencontainers.image.ref.name annotation of the layout's index), and
// writes it as an OCI layout to dir. It returns the image's digest.
func Build(binary, ref, dir string) (v1.Hash, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return v1.Hash{}, fmt.Errorf("image: %w", err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: BinaryPath[1:], Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	if _, err := tw.Write(data); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	if err := tw.Close(); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{BinaryPath}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/lastgasp/lastgasp"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return v1.Hash{}, fmt.Errorf("image: %w", err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("image: layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return v1.Hash{}, fmt.Errorf("image: layout: %w", err)
	}
	return img.Digest()
}
