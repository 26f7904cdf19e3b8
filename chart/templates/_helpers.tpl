{{/*
Names, labels and the few constants the templates share. Object names are truncated to 63
characters (the DNS label limit most Kubernetes names obey).
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "dnsd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else "<release>-<chart name>", else the release name when it already
contains the chart name.
*/}}
{{- define "dnsd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the metrics Service: the full name with a "-metrics" suffix, still within 63 characters. */}}
{{- define "dnsd.metricsName" -}}
{{- printf "%s-metrics" (include "dnsd.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* "chart-version" for the helm.sh/chart label. */}}
{{- define "dnsd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "dnsd.labels" -}}
helm.sh/chart: {{ include "dnsd.chart" . }}
{{ include "dnsd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the pods; never change them on upgrade (Deployment selectors are immutable). */}}
{{- define "dnsd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dnsd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* ServiceAccount the pods run as. */}}
{{- define "dnsd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dnsd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository, then @digest when set, else :tag (default appVersion). */}}
{{- define "dnsd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Container ports. dnsd listens unprivileged; the Service maps 53 to dnsPort. Not settable. */}}
{{- define "dnsd.dnsPort" -}}1053{{- end }}
{{- define "dnsd.httpPort" -}}8080{{- end }}

{{/*
The dnsd.yaml the ConfigMap holds: every key of .Values.config that is set (not null, not an empty
list), plus listen and http, which the chart owns because they must match the container ports.
The HTTP side listens on the first of listenFamilies (the family kubelet probes and Prometheus use).
*/}}
{{- define "dnsd.configYaml" -}}
{{- $cfg := dict }}
{{- range $key, $value := .Values.config }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "slice" $value) (empty $value))) }}
{{- $_ := set $cfg $key $value }}
{{- end }}
{{- end }}
{{- $listen := list }}
{{- range .Values.listenFamilies }}
{{- if eq . "IPv6" }}
{{- $listen = append $listen (printf "[::]:%s" (include "dnsd.dnsPort" $)) }}
{{- else }}
{{- $listen = append $listen (printf "0.0.0.0:%s" (include "dnsd.dnsPort" $)) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "listen" $listen }}
{{- if .Values.ingress.enabled }}
{{- $_ := set $cfg "ingress" true }}
{{- if .Values.ingress.classes }}
{{- $_ := set $cfg "ingress_class" .Values.ingress.classes }}
{{- end }}
{{- end }}
{{- if .Values.gatewayApi.enabled }}
{{- $_ := set $cfg "gateway_api" true }}
{{- if .Values.gatewayApi.classes }}
{{- $_ := set $cfg "gateway_class" .Values.gatewayApi.classes }}
{{- end }}
{{- end }}
{{- if .Values.dnssec.existingSecret }}
{{- $_ := set $cfg "dnssec_keys" "/etc/dnsd/dnssec" }}
{{- end }}
{{- if .Values.tsig.existingSecret }}
{{- $keyFiles := list }}
{{- range .Values.tsig.files }}
{{- $keyFiles = append $keyFiles (printf "/etc/dnsd/tsig/%s" .) }}
{{- end }}
{{- if $keyFiles }}
{{- $_ := set $cfg "tsig_key_file" $keyFiles }}
{{- end }}
{{- end }}
{{- if eq (first .Values.listenFamilies) "IPv6" }}
{{- $_ := set $cfg "http" (printf "[::]:%s" (include "dnsd.httpPort" .)) }}
{{- else }}
{{- $_ := set $cfg "http" (printf "0.0.0.0:%s" (include "dnsd.httpPort" .)) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* dnsd's effective lame duck in seconds (its default is 5). */}}
{{- define "dnsd.lameDuck" -}}
{{- if kindIs "invalid" .Values.config.lame_duck }}5{{ else }}{{ .Values.config.lame_duck }}{{ end }}
{{- end }}

{{/* "[addr]:53" for an IPv6 address, "addr:53" for IPv4: the form CoreDNS's forward wants. */}}
{{- define "dnsd.hostPort53" -}}
{{- if contains ":" . }}{{ printf "[%s]:53" . }}{{ else }}{{ printf "%s:53" . }}{{ end }}
{{- end }}

{{/* The read-only rules dnsd needs: Services and EndpointSlices (a ClusterRole, or a Role per namespace),
     plus Ingresses and the Gateway API kinds only when those sources are enabled. */}}
{{- define "dnsd.rbacRules" -}}
- apiGroups:
    - ""
  resources:
    - services
  verbs:
    - get
    - list
    - watch
- apiGroups:
    - discovery.k8s.io
  resources:
    - endpointslices
  verbs:
    - get
    - list
    - watch
{{- if .Values.ingress.enabled }}
- apiGroups:
    - networking.k8s.io
  resources:
    - ingresses
  verbs:
    - get
    - list
    - watch
{{- end }}
{{- if .Values.gatewayApi.enabled }}
- apiGroups:
    - gateway.networking.k8s.io
  resources:
    - gateways
    - httproutes
    - grpcroutes
    - tlsroutes
  verbs:
    - get
    - list
    - watch
{{- end }}
{{- end }}
