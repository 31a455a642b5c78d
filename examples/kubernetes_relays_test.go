//go:build !windows

package examples_test

import (
	"net"
	"testing"
	"time"
)

// k8sScaling is what TestKubernetesRelays reads of a manifest beyond k8sObject.
type k8sScaling struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Replicas  int    `yaml:"replicas"`
		ClusterIP string `yaml:"clusterIP"`
		// Selector is a Service's labels, or a Deployment's matchLabels map.
		Selector map[string]interface{} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// TestKubernetesRelays parses the relay example's manifests, checks each
// Deployment as TestKubernetes does, and checks the scale-out: three relay
// replicas, a headless Service that selects them and carries 8443 on UDP and
// TCP, and origins whose PQT_TUNNEL names that Service, with a valid
// PQT_RESOLVE_INTERVAL.
func TestKubernetesRelays(t *testing.T) {
	const relays, origins = "kubernetes-relays/relays.yaml", "kubernetes-relays/origin.yaml"
	configMaps := map[string]map[string]interface{}{}
	deployments := map[string]k8sObject{}
	for _, file := range []string{relays, origins} {
		objs := readManifests(t, file)
		for _, o := range objs {
			if o.Kind == "ConfigMap" {
				configMaps[o.Metadata.Name] = o.Data
				for k, v := range o.Data {
					if _, ok := v.(string); !ok {
						t.Errorf("%s: ConfigMap %s: %s is %T, but ConfigMap values must be strings (quote it)", file, o.Metadata.Name, k, v)
					}
				}
			}
		}
		for _, o := range objs {
			if o.Kind == "Deployment" {
				checkDeployment(t, file, o, configMaps)
				deployments[o.Metadata.Name] = o
			}
		}
	}
	scaling := map[string]k8sScaling{}
	for _, file := range []string{relays, origins} {
		for _, o := range decodeYAMLDocuments[k8sScaling](t, file) {
			scaling[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	relay, ok := scaling["Deployment/relay"]
	if !ok {
		t.Fatalf("%s: no Deployment relay", relays)
	}
	if relay.Spec.Replicas != 3 {
		t.Errorf("%s: Deployment relay has %d replicas, want 3", relays, relay.Spec.Replicas)
	}
	relayEnv := sidecarEnv(t, deployments["relay"], configMaps)
	if relayEnv["PQT_MODE"] != "listen" {
		t.Errorf("%s: the relays' PQT_MODE is %q, want listen", relays, relayEnv["PQT_MODE"])
	}
	svc, ok := scaling["Service/relay-tunnel"]
	if !ok {
		t.Fatalf("%s: no Service relay-tunnel", relays)
	}
	if svc.Spec.ClusterIP != "None" {
		t.Errorf("%s: Service relay-tunnel has clusterIP %q, want None (headless, so that its name resolves to every relay)", relays, svc.Spec.ClusterIP)
	}
	for k, v := range svc.Spec.Selector {
		if s, _ := v.(string); relay.Spec.Template.Metadata.Labels[k] != s {
			t.Errorf("%s: Service relay-tunnel selects %s=%s, which the relay pods do not carry", relays, k, v)
		}
	}
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("%s: Service relay-tunnel has no selector", relays)
	}
	for _, o := range readManifests(t, relays) {
		if o.Kind == "Service" && o.Metadata.Name == "relay-tunnel" {
			var udp, tcp bool
			for _, p := range o.Spec.Ports {
				udp = udp || (p.Port == 8443 && p.Protocol == "UDP")
				tcp = tcp || (p.Port == 8443 && p.Protocol == "TCP")
			}
			if !udp || !tcp {
				t.Errorf("%s: Service relay-tunnel does not carry 8443 on both UDP and TCP", relays)
			}
		}
	}
	origin, ok := deployments["origin"]
	if !ok {
		t.Fatalf("%s: no Deployment origin", origins)
	}
	env := sidecarEnv(t, origin, configMaps)
	host, port, err := net.SplitHostPort(env["PQT_TUNNEL"])
	if err != nil || host != "relay-tunnel" || port != "8443" {
		t.Errorf("%s: the origins' PQT_TUNNEL is %q, want the headless Service relay-tunnel:8443", origins, env["PQT_TUNNEL"])
	}
	if env["PQT_MODE"] != "dial" || env["PQT_TARGET"] == "" {
		t.Errorf("%s: the origins' sidecar is PQT_MODE=%q with PQT_TARGET=%q, want a dial side with a target", origins, env["PQT_MODE"], env["PQT_TARGET"])
	}
	if d, err := time.ParseDuration(env["PQT_RESOLVE_INTERVAL"]); err != nil || d <= 0 {
		t.Errorf("%s: PQT_RESOLVE_INTERVAL=%q is not a positive duration", origins, env["PQT_RESOLVE_INTERVAL"])
	}
}

// sidecarEnv is the ConfigMap environment of a Deployment's pqtunnel container.
func sidecarEnv(t *testing.T, d k8sObject, configMaps map[string]map[string]interface{}) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name != "pqtunnel" || len(c.EnvFrom) != 1 {
			continue
		}
		for k, v := range configMaps[c.EnvFrom[0].ConfigMapRef.Name] {
			s, _ := v.(string)
			out[k] = s
		}
	}
	return out
}
