{{/*
Names.
*/}}
{{- define "moat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moat.fullname" -}}
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

{{- define "moat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moat.control.fullname" -}}
{{- printf "%s-control" (include "moat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moat.control.headless" -}}
{{- printf "%s-control-headless" (include "moat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moat.edge.fullname" -}}
{{- printf "%s-edge" (include "moat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels. "moat.labels" takes a dict with the root context as "ctx" and the component.
*/}}
{{- define "moat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moat.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "moat.labels" -}}
helm.sh/chart: {{ include "moat.chart" .ctx }}
{{ include "moat.selectorLabels" . }}
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: moat
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The metadata.annotations block of commonAnnotations, indented for a top-level resource;
renders nothing when there are none. Included right after the labels block.
*/}}
{{- define "moat.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- printf "annotations:\n%s" (toYaml . | indent 2) | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The image reference.
*/}}
{{- define "moat.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of a pod spec (indented for spec.template.spec); nothing when empty. */}}
{{- define "moat.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
      imagePullSecrets:
{{- range . }}
        - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Control plane addressing. Peer ids are the StatefulSet ordinal + 1.
*/}}
{{- define "moat.control.podDomain" -}}
{{- printf "%s.%s.svc.%s" (include "moat.control.headless" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* "host:port" of control pod number .ordinal; takes a dict with "ctx" and "ordinal". */}}
{{- define "moat.control.podAddress" -}}
{{- printf "%s-%d.%s:%d" (include "moat.control.fullname" .ctx) (int .ordinal) (include "moat.control.podDomain" .ctx) (int .ctx.Values.control.grpcPort) }}
{{- end }}

{{/* Comma-separated gRPC addresses of every control pod (the edges' --control). */}}
{{- define "moat.control.endpoints" -}}
{{- $addrs := list }}
{{- range $i := until (int .Values.control.replicas) }}
{{- $addrs = append $addrs (include "moat.control.podAddress" (dict "ctx" $ "ordinal" $i)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/* The control plane's client Service address, "host:port". */}}
{{- define "moat.control.serviceAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "moat.control.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.control.grpcPort) }}
{{- end }}

{{/*
Founding members: control.foundingMembers when set, else the count recorded on the running
StatefulSet (upgrades), else control.replicas (first install, and `helm template`).
*/}}
{{- define "moat.control.foundingMembers" -}}
{{- if not (kindIs "invalid" .Values.control.foundingMembers) }}
{{- .Values.control.foundingMembers | int }}
{{- else }}
{{- $sts := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "moat.control.fullname" .) }}
{{- $recorded := dig "metadata" "annotations" "moat.dev/founding-members" "" ($sts | default dict) }}
{{- if $recorded }}
{{- $recorded | int }}
{{- else }}
{{- .Values.control.replicas | int }}
{{- end }}
{{- end }}
{{- end }}

{{/* Quorum of the control plane: floor(n / 2) + 1. */}}
{{- define "moat.control.quorum" -}}
{{- add (div (int .Values.control.replicas) 2) 1 }}
{{- end }}

{{/*
Secret names.
*/}}
{{- define "moat.adminToken.secretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "moat.fullname" .)) }}
{{- end }}

{{- define "moat.smtpTls.secretName" -}}
{{- .Values.tls.smtp.existingSecret | default (printf "%s-smtp-tls" (include "moat.fullname" .)) }}
{{- end }}

{{/*
Internal gRPC mutual TLS. Three certificates from one CA, each in a Secret with tls.crt,
tls.key and ca.crt; the role is the certificate's subject CN:
  control  CN moat-control, DNS SAN moat-control (what every client verifies) and the
           control Service / pod names; server and client auth (raft peers)
  edge     CN moat-edge, client auth: Policy and Signal services only
  admin    CN moat-admin, client auth: the Admin service (scale-up Job, `kubectl exec`)
"moat.internalTls.secretName" takes a dict with "ctx" and "role" (control, edge or admin).
*/}}
{{- define "moat.internalTls.secretName" -}}
{{- index .ctx.Values.tls.internal.existingSecret .role | default (printf "%s-%s-tls" (include "moat.fullname" .ctx) .role) }}
{{- end }}

{{- define "moat.internalTls.controlSecretName" -}}
{{- include "moat.internalTls.secretName" (dict "ctx" . "role" "control") }}
{{- end }}

{{- define "moat.internalTls.edgeSecretName" -}}
{{- include "moat.internalTls.secretName" (dict "ctx" . "role" "edge") }}
{{- end }}

{{- define "moat.internalTls.adminSecretName" -}}
{{- include "moat.internalTls.secretName" (dict "ctx" . "role" "admin") }}
{{- end }}

{{/* The Secret holding the chart-generated CA (certificate and key), so that upgrades can
sign a missing certificate with the same CA. */}}
{{- define "moat.internalTls.generatedCaSecretName" -}}
{{- printf "%s-generated-ca" (include "moat.fullname" .) }}
{{- end }}

{{/* Subject common name of each role's certificate. */}}
{{- define "moat.internalTls.commonName" -}}
{{- index (dict "control" "moat-control" "edge" "moat-edge" "admin" "moat-admin") . }}
{{- end }}

{{/* Whether the operator supplies the internal certificates as Secrets. */}}
{{- define "moat.internalTls.existing" -}}
{{- $s := .Values.tls.internal.existingSecret }}
{{- if and .Values.tls.internal.enabled (or $s.control $s.edge $s.admin) }}true{{- end }}
{{- end }}

{{/* Whether cert-manager issues the internal certificates. */}}
{{- define "moat.internalTls.certManager" -}}
{{- $t := .Values.tls.internal }}
{{- if and $t.enabled $t.certManager.enabled (not (include "moat.internalTls.existing" .)) }}true{{- end }}
{{- end }}

{{/* Whether the chart generates the internal certificates itself (no Secret, no cert-manager). */}}
{{- define "moat.internalTls.generate" -}}
{{- $t := .Values.tls.internal }}
{{- if and $t.enabled (not $t.certManager.enabled) (not (include "moat.internalTls.existing" .)) }}true{{- end }}
{{- end }}

{{/* DNS names a control node's certificate holds: moat-control first (every client verifies
that name, whatever address it dials), then the Service and pod names. */}}
{{- define "moat.internalTls.controlDnsNames" -}}
{{- $headless := include "moat.control.headless" . }}
{{- $svc := include "moat.control.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list
      "moat-control"
      (printf "*.%s.%s.svc.%s" $headless $ns .Values.clusterDomain)
      (printf "*.%s.%s.svc" $headless $ns)
      (printf "*.%s.%s" $headless $ns)
      (printf "*.%s" $headless)
      (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain)
      (printf "%s.%s.svc" $svc $ns)
      (printf "%s.%s" $svc $ns)
      $svc
      "localhost" }}
{{- toJson $names }}
{{- end }}

{{/*
Internal TLS mount paths: a process's own certificate (control nodes: the control one; edges:
the edge one), and the admin certificate (scale-up Job; control pods, for `kubectl exec`).
*/}}
{{- define "moat.internalTls.mountPath" -}}/etc/moat/internal-tls{{- end }}
{{- define "moat.adminTls.mountPath" -}}/etc/moat/admin-tls{{- end }}

{{/* `moat admin` flags for the admin certificate mounted at moat.adminTls.mountPath (one
line, or nothing when internal TLS is off). */}}
{{- define "moat.adminTls.flags" -}}
{{- if .Values.tls.internal.enabled }}
{{- $dir := include "moat.adminTls.mountPath" . }}
{{- printf "--tls-ca %s/ca.crt --tls-cert %s/tls.crt --tls-key %s/tls.key" $dir $dir $dir }}
{{- end }}
{{- end }}

{{/* The same as environment variables (list items, indented by the caller), for a container
where an operator runs `moat admin` by hand; nothing when internal TLS is off. */}}
{{- define "moat.adminTls.env" -}}
{{- if .Values.tls.internal.enabled }}
{{- $dir := include "moat.adminTls.mountPath" . }}
- name: MOAT_TLS_CA
  value: {{ $dir }}/ca.crt
- name: MOAT_TLS_CERT
  value: {{ $dir }}/tls.crt
- name: MOAT_TLS_KEY
  value: {{ $dir }}/tls.key
{{- end }}
{{- end }}

{{/*
Pod anti-affinity preset; takes a dict with "ctx", "component", "preset" and "topologyKey".
*/}}
{{- define "moat.podAntiAffinity" -}}
{{- if eq .preset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: {{ .topologyKey }}
      labelSelector:
        matchLabels:
          {{- include "moat.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: {{ .topologyKey }}
        labelSelector:
          matchLabels:
            {{- include "moat.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end }}

{{/*
Renders a flat map as TOML "key = value" lines (scalar values: strings, numbers, booleans).
*/}}
{{- define "moat.toml.pairs" -}}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- fail (printf "edge configuration: %s must be a scalar, not a table" $k) }}
{{- end }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}

{{/*
A [next-hop] / [outbound-next-hop] body from a values map.
*/}}
{{- define "moat.toml.nextHop" -}}
kind = {{ toJson .kind }}
{{- if eq .kind "maildir" }}
path = {{ required "edge.nextHop.path is required for kind maildir" .path | toJson }}
{{- else }}
address = {{ required "edge.nextHop.address (host:port) is required" .address | toJson }}
{{- with .starttls }}
starttls = {{ toJson . }}
{{- end }}
{{- with .ca }}
ca = {{ toJson . }}
{{- end }}
{{- with .timeout }}
timeout = {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that cannot be written in values.schema.json.
*/}}
{{- define "moat.validate" -}}
{{- $e := .Values.edge }}
{{- if le (int $e.terminationGracePeriodSeconds) (add (int $e.preStopSleepSeconds) (int $e.drainTimeoutSeconds)) }}
{{- fail (printf "edge.terminationGracePeriodSeconds (%d) must exceed edge.preStopSleepSeconds + edge.drainTimeoutSeconds (%d)" (int $e.terminationGracePeriodSeconds) (add (int $e.preStopSleepSeconds) (int $e.drainTimeoutSeconds))) }}
{{- end }}
{{- if and $e.autoscaling.enabled (gt (int $e.autoscaling.minReplicas) (int $e.autoscaling.maxReplicas)) }}
{{- fail "edge.autoscaling.minReplicas must not exceed edge.autoscaling.maxReplicas" }}
{{- end }}
{{- $founding := include "moat.control.foundingMembers" . | int }}
{{- if gt $founding (int .Values.control.replicas) }}
{{- fail (printf "control.replicas (%d) is below the %d founding members: remove nodes with `moat admin cluster remove-node` first, then set control.foundingMembers to the members left" (int .Values.control.replicas) $founding) }}
{{- end }}
{{- if and .Values.tls.smtp.certManager.enabled (not .Values.tls.smtp.existingSecret) (not .Values.tls.smtp.certManager.issuerRef.name) }}
{{- fail "tls.smtp.certManager.issuerRef.name is required when tls.smtp.certManager.enabled is true" }}
{{- end }}
{{- $s := .Values.tls.internal.existingSecret }}
{{- if and (include "moat.internalTls.existing" .) (not (and $s.control $s.edge $s.admin)) }}
{{- fail "tls.internal.existingSecret: set all three of control, edge and admin (Secrets with tls.crt, tls.key and ca.crt from one CA), or none" }}
{{- end }}
{{- $names := list }}
{{- range $e.listeners }}
{{- if has .name $names }}
{{- fail (printf "edge.listeners: the name %q is used twice" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
