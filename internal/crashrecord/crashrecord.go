// Package crashrecord keeps a record of every kernel crash in the API
// server, as a cluster-scoped KernelCrash object (group lastgasp.io) that
// outlives the node, its pods and the collector: what the kernel said,
// the crash's signature, what lastgasp did and the pods it ended. Its
// CRD, with the schema the API server enforces, is
// deploy/kernelcrash-crd.yaml.
//
// A record is named by its incident id, so that two collectors hearing
// the same panic write one record: the first create wins, and
// AlreadyExists is done. Records are pruned after a retention.
//
// The records are read and written with the dynamic client as
// unstructured objects, translated from and to the small KernelCrash
// type: no generated clientset.
package crashrecord

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/lastgasp/lastgasp/internal/cleanup"
	"github.com/lastgasp/lastgasp/internal/signature"
)

// Resource is the KernelCrash resource.
var Resource = schema.GroupVersionResource{Group: "lastgasp.io", Version: "v1alpha1", Resource: "kernelcrashes"}

// Kind and APIVersion of a KernelCrash.
const (
	Kind       = "KernelCrash"
	APIVersion = "lastgasp.io/v1alpha1"
)

// Bounds of a record, the same as the CRD's schema states: a record stays
// far below etcd's object size limit (1.5 MiB) whatever the kernel said
// and however many pods the node had.
const (
	MaxLines      = 200  // kept lines
	MaxLineLength = 1024 // bytes of one kept line, or of a text field
	MaxPods       = 1000 // ended pods listed
)

// DefaultRetention is how long records are kept.
const DefaultRetention = 30 * 24 * time.Hour

// KernelCrash is one crash's record.
type KernelCrash struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              Spec `json:"spec"`
}

// Spec is what a record keeps. It never changes once written, but for
// Storm.
type Spec struct {
	// Incident is the incident id (the object's name too); Node the
	// node it was about; the fields to LastTime are the detector's
	// (detect.Incident).
	Incident string  `json:"incident"`
	Node     NodeRef `json:"node"`
	Source   string  `json:"source"`
	Kind     string  `json:"kind"`
	Fatal    bool    `json:"fatal"`
	Reason   string  `json:"reason"`
	Cause    string  `json:"cause"`
	Module   string  `json:"module,omitempty"`
	Task     string  `json:"task,omitempty"`
	PID      int     `json:"pid,omitempty"`
	// KernelRelease is the kernel's release, when its messages named it
	// ("6.1.0-56-amd64").
	KernelRelease string      `json:"kernelRelease,omitempty"`
	FirstTime     metav1.Time `json:"firstTime"`
	LastTime      metav1.Time `json:"lastTime"`
	// Lines are the kernel's lines, at most MaxLines; LinesDropped
	// counts the others.
	Lines        []string `json:"lines,omitempty"`
	LinesDropped int      `json:"linesDropped,omitempty"`
	// Signature names the crash the same on every node and boot.
	Signature Signature `json:"signature"`
	// Outcome is what lastgasp did (cleanup.Outcome).
	Outcome string `json:"outcome"`
	// ConfirmedDeadAt is when the node was found dead; NodeDeletedAt when
	// its Node was deleted.
	ConfirmedDeadAt *metav1.Time `json:"confirmedDeadAt,omitempty"`
	NodeDeletedAt   *metav1.Time `json:"nodeDeletedAt,omitempty"`
	// CappedAt is when the node deletion cap first held the incident
	// back to wait its turn; absent: it did not.
	CappedAt *metav1.Time `json:"cappedAt,omitempty"`
	// Pods are the pods ended, at most MaxPods; PodCount counts them
	// all.
	Pods     []cleanup.EndedPod `json:"pods,omitempty"`
	PodCount int                `json:"podCount"`
	// ReportedBy is the collector that wrote the record.
	ReportedBy string `json:"reportedBy,omitempty"`
	// Storm is set when this crash was part of a storm: its signature
	// on too many nodes at once.
	Storm bool `json:"storm,omitempty"`
}

// NodeRef names a Node.
type NodeRef struct {
	Name string    `json:"name"`
	UID  types.UID `json:"uid,omitempty"`
}

// Signature is signature.Signature as a record keeps it.
type Signature struct {
	ID     string   `json:"id"`
	Title  string   `json:"title"`
	Frames []string `json:"frames,omitempty"`
}

// FromFinished makes the record of a finished incident.
func FromFinished(f cleanup.Finished, reportedBy string) *KernelCrash {
	inc := f.Incident
	sig := signature.Of(inc)
	lines := inc.Lines
	dropped := inc.LinesDropped
	if len(lines) > MaxLines {
		dropped += len(lines) - MaxLines
		lines = lines[:MaxLines]
	}
	kept := make([]string, len(lines))
	for i, l := range lines {
		kept[i] = clip(l)
	}
	pods := f.Pods
	if len(pods) > MaxPods {
		pods = pods[:MaxPods]
	}
	spec := Spec{
		Incident: inc.ID, Node: NodeRef{Name: f.Node, UID: f.NodeUID}, Source: inc.Source.String(),
		Kind: string(inc.Kind), Fatal: inc.Fatal, Reason: clip(inc.Reason), Cause: clip(inc.Cause),
		Module: clip(inc.Module), Task: clip(inc.Task), PID: inc.PID,
		KernelRelease: cmp.Or(release(inc.Release), KernelRelease(inc.Lines)),
		FirstTime:     metav1.NewTime(inc.First), LastTime: metav1.NewTime(inc.Last),
		Lines: kept, LinesDropped: dropped,
		Signature: Signature{ID: sig.ID, Title: clip(sig.Title), Frames: sig.Frames},
		Outcome:   string(f.Outcome),
		Pods:      pods, PodCount: len(f.Pods),
		ReportedBy: reportedBy,
		Storm:      f.Outcome == cleanup.OutcomeStorm,
	}
	if !f.ConfirmedDeadAt.IsZero() {
		t := metav1.NewTime(f.ConfirmedDeadAt)
		spec.ConfirmedDeadAt = &t
	}
	if !f.NodeDeletedAt.IsZero() {
		t := metav1.NewTime(f.NodeDeletedAt)
		spec.NodeDeletedAt = &t
	}
	if !f.CappedAt.IsZero() {
		t := metav1.NewTime(f.CappedAt)
		spec.CappedAt = &t
	}
	labels := map[string]string{LabelSignature: sig.ID, LabelNode: labelValue(f.Node)}
	if spec.Storm {
		labels[LabelStorm] = "true"
	}
	return &KernelCrash{
		TypeMeta:   metav1.TypeMeta{Kind: Kind, APIVersion: APIVersion},
		ObjectMeta: metav1.ObjectMeta{Name: inc.ID, Labels: labels},
		Spec:       spec,
	}
}

// Labels on a record, to select by: the crash's signature, its node (a
// node name longer than a label value is cut: the spec has it whole),
// and "true" on a storm's records (kubectl get kernelcrashes -l
// lastgasp.io/storm=true -o wide shows the storms' signatures).
const (
	LabelSignature = "lastgasp.io/signature"
	LabelNode      = "lastgasp.io/node"
	LabelStorm     = "lastgasp.io/storm"
)

func labelValue(s string) string {
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-_.")
	}
	return s
}

func clip(s string) string {
	if len(s) <= MaxLineLength {
		return s
	}
	cut := MaxLineLength - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xc0 != 0x80 }

// releaseRE finds the kernel release in the line the kernel prints with
// every report: "CPU: 0 PID: 104 Comm: insmod Tainted: G OE
// 6.1.0-56-amd64 #1 Debian 6.1.192-2" (or "Not tainted 6.1.0-56-amd64 #1").
var releaseRE = regexp.MustCompile(`(?:Not tainted|Tainted: [A-Z ]*?) +(\d+\.\d+\S*) #`)

// maxRelease is the longest kernel release there is (the kernel's
// __NEW_UTS_LEN).
const maxRelease = 64

// release returns the release the incident's messages carried (netconsole's
// release prepend or sysdata), or "" for one no kernel could send.
func release(r string) string {
	if len(r) > maxRelease || !utf8.ValidString(r) {
		return ""
	}
	return r
}

// KernelRelease returns the kernel release a crash's lines name, or "".
func KernelRelease(lines []string) string {
	for _, l := range lines {
		if m := releaseRE.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	return ""
}

// Store reads and writes records.
type Store struct {
	client dynamic.NamespaceableResourceInterface
}

// NewStore returns a Store that uses client.
func NewStore(client dynamic.Interface) *Store {
	return &Store{client: client.Resource(Resource)}
}

// Create writes a record, unless one of its name exists already
// (another collector's of the same crash): created says which.
func (s *Store) Create(ctx context.Context, kc *KernelCrash) (created bool, err error) {
	u, err := toUnstructured(kc)
	if err != nil {
		return false, err
	}
	_, err = s.client.Create(ctx, u, metav1.CreateOptions{FieldManager: "lastgasp"})
	switch {
	case apierrors.IsAlreadyExists(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("create KernelCrash %s: %w", kc.Name, err)
	}
	return true, nil
}

// Get reads one record by incident id.
func (s *Store) Get(ctx context.Context, id string) (*KernelCrash, error) {
	u, err := s.client.Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get KernelCrash %s: %w", id, err)
	}
	return fromUnstructured(u)
}

// listPage is how many records one list call returns.
const listPage = 500

// List reads every record that selector (a label selector; "" for all)
// selects, oldest crash first.
func (s *Store) List(ctx context.Context, selector string) ([]KernelCrash, error) {
	var out []KernelCrash
	opts := metav1.ListOptions{LabelSelector: selector, Limit: listPage}
	for {
		list, err := s.client.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list KernelCrashes: %w", err)
		}
		for i := range list.Items {
			kc, err := fromUnstructured(&list.Items[i])
			if err != nil {
				return nil, err
			}
			out = append(out, *kc)
		}
		if opts.Continue = list.GetContinue(); opts.Continue == "" {
			break
		}
	}
	slices.SortStableFunc(out, func(a, b KernelCrash) int {
		if c := a.Spec.FirstTime.Compare(b.Spec.FirstTime.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// Prune deletes the records of crashes whose last line came more than
// retention before now, and returns how many it deleted. Each delete
// carries the record's UID, and one already gone (another collector
// pruned it) is not an error.
func (s *Store) Prune(ctx context.Context, retention time.Duration, now time.Time) (int, error) {
	all, err := s.List(ctx, "")
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, kc := range all {
		if now.Sub(kc.Spec.LastTime.Time) <= retention {
			continue
		}
		uid := kc.UID
		err := s.client.Delete(ctx, kc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		case err != nil:
			return deleted, fmt.Errorf("prune KernelCrash %s: %w", kc.Name, err)
		default:
			deleted++
		}
	}
	return deleted, nil
}

// Replace writes kc over the record of its name, as of kc's
// resourceVersion (a conflict, someone else's write since, is an error:
// read it again), by a JSON merge patch: the verb patch, as MarkStorm's.
func (s *Store) Replace(ctx context.Context, kc *KernelCrash) error {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": kc.ResourceVersion, "labels": kc.Labels},
		"spec":     kc.Spec,
	})
	if err != nil {
		return fmt.Errorf("encode KernelCrash %s: %w", kc.Name, err)
	}
	if _, err := s.client.Patch(ctx, kc.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "lastgasp"}); err != nil {
		return fmt.Errorf("replace KernelCrash %s: %w", kc.Name, err)
	}
	return nil
}

// MarkStorm sets Storm on a record, and its LabelStorm (a JSON merge
// patch); one gone (pruned) is not an error.
func (s *Store) MarkStorm(ctx context.Context, id string) error {
	patch := `{"metadata":{"labels":{"` + LabelStorm + `":"true"}},"spec":{"storm":true}}`
	_, err := s.client.Patch(ctx, id, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "lastgasp"})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("mark KernelCrash %s as a storm's: %w", id, err)
	}
	return nil
}

func toUnstructured(kc *KernelCrash) (*unstructured.Unstructured, error) {
	data, err := json.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("encode KernelCrash %s: %w", kc.Name, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("encode KernelCrash %s: %w", kc.Name, err)
	}
	return u, nil
}

func fromUnstructured(u *unstructured.Unstructured) (*KernelCrash, error) {
	data, err := u.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("decode KernelCrash %s: %w", u.GetName(), err)
	}
	kc := &KernelCrash{}
	if err := json.Unmarshal(data, kc); err != nil {
		return nil, fmt.Errorf("decode KernelCrash %s: %w", u.GetName(), err)
	}
	return kc, nil
}
