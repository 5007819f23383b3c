{{/* Chart name. */}}
{{- define "dysco.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release already contains the chart name. */}}
{{- define "dysco.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dysco.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "dysco.labels" -}}
helm.sh/chart: {{ include "dysco.chart" .ctx }}
{{ include "dysco.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: dysco
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dysco.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dysco.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dysco.operatorName" -}}{{ include "dysco.fullname" . }}-operator{{- end -}}
{{- define "dysco.agentName" -}}{{ include "dysco.fullname" . }}-agent{{- end -}}

{{- define "dysco.peeringName" -}}
{{- default (include "dysco.fullname" .) .Values.operator.peeringName -}}
{{- end -}}

{{- define "dysco.hmacSecretName" -}}
{{- default (printf "%s-control-key" (include "dysco.fullname" .)) .Values.controlChannel.existingSecret -}}
{{- end -}}

{{- define "dysco.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
