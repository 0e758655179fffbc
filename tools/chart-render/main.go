// chart-render renders a Helm chart the way `helm template` does, without helm.
//
// It exists so the chart tests run on machines with no helm binary (CI here has none). It implements
// the part of Helm the lockwrap chart uses: values.yaml deep-merged with -f files and -set overrides
// (a null removes a key, as in Helm), values passed through JSON so every number is a float64 (as in
// Helm, so the chart meets Helm's typing pitfalls here too), Sprig plus Helm's own functions (include,
// tpl, required, toYaml, fromYaml, toJson, fromJson; `fail` is Sprig's), the .Values / .Release / .Chart
// / .Capabilities / .Template objects, `missingkey=zero` with "<no value>" removed from the output,
// every file under templates/ parsed into one template set, partials (`_*`) and NOTES.txt not emitted.
// Not implemented: lookup, .Files, subcharts, schema validation (tests/chart does that in Python).
//
// Usage: chart-render [-f values.yaml]... [-set a.b=v]... [-name REL] [-namespace NS]
//
//	[-kube-version 1.30.0] [-notes-out FILE] CHART_DIR
//
// Output: one `---` document per non-empty rendered template, preceded by `# Source: <chart>/<path>`.
// Exit status 1 with a Helm-like message when rendering fails (e.g. a template calls `fail`).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Values is the generic JSON-shaped tree Helm gives templates.
type Values = map[string]interface{}

// KubeVersion mirrors Helm's .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// VersionSet mirrors Helm's .Capabilities.APIVersions (only Has is used by charts).
type VersionSet []string

// Has reports whether an apiVersion or "apiVersion/Kind" is available, like Helm's.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities mirrors Helm's .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// defaultAPIVersions lists the built-in API groups of a 1.30 cluster that charts usually test for.
var defaultAPIVersions = VersionSet{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1",
	"rbac.authorization.k8s.io/v1", "storage.k8s.io/v1", "coordination.k8s.io/v1",
	"apps/v1/Deployment", "batch/v1/CronJob", "batch/v1/Job", "policy/v1/PodDisruptionBudget",
}

func main() {
	var valueFiles, sets multiFlag
	flag.Var(&valueFiles, "f", "values file merged over the chart's values.yaml (repeatable)")
	flag.Var(&sets, "set", "override a.b.c=value, value parsed as YAML (repeatable)")
	name := flag.String("name", "release-name", "release name (helm template's default)")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "1.30.0", "Kubernetes version for .Capabilities")
	notesOut := flag.String("notes-out", "", "also render templates/NOTES.txt into this file")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-f values.yaml]... [-set k=v]... CHART_DIR")
		os.Exit(2)
	}
	out, notes, err := render(flag.Arg(0), valueFiles, sets, *name, *namespace, *kubeVersion, *notesOut != "")
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	if *notesOut != "" {
		if err := os.WriteFile(*notesOut, []byte(notes), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "Error:", err)
			os.Exit(1)
		}
	}
	os.Stdout.WriteString(out)
}

func render(chartDir string, valueFiles, sets []string, name, namespace, kubeVersion string, withNotes bool) (string, string, error) {
	chartMeta, err := readYAMLFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", "", fmt.Errorf("Chart.yaml: %w", err)
	}
	chartName, _ := chartMeta["name"].(string)
	if chartName == "" {
		return "", "", errors.New("Chart.yaml: name is required")
	}
	values, err := readYAMLFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", "", fmt.Errorf("values.yaml: %w", err)
	}
	for _, f := range valueFiles {
		override, err := readYAMLFile(f)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", f, err)
		}
		values = coalesce(values, override)
	}
	for _, s := range sets {
		if err := applySet(values, s); err != nil {
			return "", "", err
		}
	}

	// Helm names templates "<chart>/templates/<path>" and parses them all into one set, so every
	// file sees every `define`.
	tmplDir := filepath.Join(chartDir, "templates")
	files := map[string]string{}
	err = filepath.WalkDir(tmplDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[chartName+"/"+filepath.ToSlash(rel)] = string(data)
		return nil
	})
	if err != nil {
		return "", "", err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)

	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root))
	for _, n := range names {
		if _, err := root.New(n).Parse(files[n]); err != nil {
			return "", "", cleanError(err)
		}
	}

	major, minor := "1", "30"
	if parts := strings.SplitN(strings.TrimPrefix(kubeVersion, "v"), ".", 3); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	top := Values{
		"Values": values,
		"Release": Values{
			"Name": name, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": chartObject(chartMeta),
		"Capabilities": Capabilities{
			KubeVersion: KubeVersion{Version: "v" + strings.TrimPrefix(kubeVersion, "v"), Major: major, Minor: minor,
				GitVersion: "v" + strings.TrimPrefix(kubeVersion, "v")},
			APIVersions: defaultAPIVersions,
		},
	}

	var out, notes strings.Builder
	for _, n := range names {
		base := filepath.Base(n)
		isNotes := strings.HasSuffix(n, "/templates/NOTES.txt")
		if strings.HasPrefix(base, "_") || (isNotes && !withNotes) {
			continue
		}
		if !isNotes && !(strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".tpl")) {
			continue
		}
		vals := Values{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = Values{"Name": n, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, n, vals); err != nil {
			return "", "", cleanError(err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if isNotes {
			notes.WriteString(text)
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", n, strings.TrimRight(text, "\n"))
	}
	return out.String(), notes.String(), nil
}

// funcMap is Sprig's text functions plus Helm's, minus the ones Helm removes (env access).
func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := map[string]int{}
	f["include"] = func(name string, data interface{}) (string, error) {
		// Helm bounds recursion the same way, so a self-including template errors instead of hanging.
		if includeDepth[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		includeDepth[name]++
		defer func() { includeDepth[name]-- }()
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(msg string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(msg)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(msg)
		}
		return val, nil
	}
	f["toYaml"] = func(v interface{}) string {
		s, err := toYAML(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(s, "\n")
	}
	f["fromYaml"] = func(s string) Values {
		m := Values{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
			return m
		}
		return normalise(m).(Values)
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["fromJson"] = func(s string) Values {
		m := Values{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["lookup"] = func(string, string, string, string) (Values, error) {
		return nil, errors.New("lookup is not supported by chart-render (helm template returns an empty map)")
	}
	return f
}

// toYAML marshals like Helm's toYaml: through JSON first, so only JSON-representable data with
// sorted keys comes out, two-space indentation.
func toYAML(v interface{}) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var generic interface{}
	if err := json.Unmarshal(b, &generic); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(generic); err != nil {
		return "", err
	}
	enc.Close()
	return buf.String(), nil
}

// readYAMLFile reads a YAML mapping and normalises it the way Helm does (a JSON round trip).
func readYAMLFile(path string) (Values, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Values
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if m == nil {
		m = Values{}
	}
	return normalise(m).(Values), nil
}

// normalise turns YAML-decoded data into the JSON shapes Helm templates see (float64 numbers).
func normalise(v interface{}) interface{} {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out interface{}
	if err := json.Unmarshal(b, &out); err != nil {
		return v
	}
	return out
}

// coalesce deep-merges override into base: maps merge key by key, anything else replaces, and an
// explicit null deletes the key (Helm's rule for user values over chart defaults).
func coalesce(base, override Values) Values {
	for k, ov := range override {
		if ov == nil {
			delete(base, k)
			continue
		}
		bm, bIsMap := base[k].(Values)
		om, oIsMap := ov.(Values)
		if bIsMap && oIsMap {
			base[k] = coalesce(bm, om)
		} else {
			base[k] = ov
		}
	}
	return base
}

// applySet applies one `a.b.c=value` override; the value is parsed as YAML (so 3 is a number).
func applySet(values Values, s string) error {
	eq := strings.Index(s, "=")
	if eq <= 0 {
		return fmt.Errorf("-set %q: want key=value", s)
	}
	var v interface{}
	if err := yaml.Unmarshal([]byte(s[eq+1:]), &v); err != nil {
		return fmt.Errorf("-set %q: %w", s, err)
	}
	v = normalise(v)
	path := strings.Split(s[:eq], ".")
	cur := values
	for _, p := range path[:len(path)-1] {
		next, ok := cur[p].(Values)
		if !ok {
			next = Values{}
			cur[p] = next
		}
		cur = next
	}
	if v == nil {
		delete(cur, path[len(path)-1])
	} else {
		cur[path[len(path)-1]] = v
	}
	return nil
}

// chartObject exposes Chart.yaml with Helm's field names (.Chart.Name, .Chart.AppVersion, …).
func chartObject(meta Values) Values {
	special := map[string]string{"apiVersion": "APIVersion", "kubeVersion": "KubeVersion", "appVersion": "AppVersion"}
	out := Values{}
	for k, v := range meta {
		if n, ok := special[k]; ok {
			out[n] = v
		} else if k != "" {
			out[strings.ToUpper(k[:1])+k[1:]] = v
		}
	}
	return out
}

var execErr = regexp.MustCompile(`template: (\S+?):(\d+):(\d+): executing "[^"]*" at <[^>]*>: error calling \w+: `)

// cleanError rewrites Go template errors into Helm's "execution error at (file:line:col): msg" form,
// naming the innermost template (the one that called fail/required through any number of includes).
func cleanError(err error) error {
	msg := err.Error()
	all := execErr.FindAllStringSubmatchIndex(msg, -1)
	if len(all) == 0 {
		return err
	}
	m := all[len(all)-1]
	return fmt.Errorf("execution error at (%s:%s:%s): %s", msg[m[2]:m[3]], msg[m[4]:m[5]], msg[m[6]:m[7]], msg[m[1]:])
}
