package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// TestBuild writes an image of a stand-in binary and reads it back as a
// registry client would: one image in the layout, under the tag, for
// linux/amd64, its entrypoint the binary, its one layer the binary at
// BinaryPath, mode 0755; and the same binary gives the same digest.
func TestBuild(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "lastgasp")
	content := []byte("\x7fELF not really, but bytes all the same")
	if err := os.WriteFile(bin, content, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image")
	digest, err := Build(bin, DefaultTag, out)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(bin, DefaultTag, filepath.Join(dir, "again"))
	if err != nil {
		t.Fatal(err)
	}
	if again != digest {
		t.Errorf("the same binary, two digests: %s, %s", digest, again)
	}

	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(manifest.Manifests) != 1 || manifest.Manifests[0].Digest != digest ||
		manifest.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != DefaultTag {
		t.Fatalf("index: %+v, want one image %s tagged %s", manifest.Manifests, digest, DefaultTag)
	}
	img, err := idx.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !slices.Equal(cfg.Config.Entrypoint, []string{BinaryPath}) {
		t.Errorf("config: %s/%s, entrypoint %q", cfg.OS, cfg.Architecture, cfg.Config.Entrypoint)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if "/"+h.Name != BinaryPath {
			continue
		}
		found = true
		data, _ := io.ReadAll(tr)
		if h.Mode != 0o755 || h.Uid != 0 || !bytes.Equal(data, content) {
			t.Errorf("%s: mode %o, uid %d, %d bytes", h.Name, h.Mode, h.Uid, len(data))
		}
	}
	if !found {
		t.Errorf("no %s in the layer", BinaryPath)
	}
}
