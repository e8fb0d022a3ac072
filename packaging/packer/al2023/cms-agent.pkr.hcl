# Bakes cms-agent into an Amazon Linux 2023 AMI, as ../cms-agent.pkr.hcl does
# into a Debian 12 one: instances launched from it enroll with cms-server at
# their first boot, with a token handed over by user data (default) or read
# from SSM Parameter Store, and converge their role. A directory of its own,
# so that each template builds alone and keeps its variables.
#
#   scripts/package --package cms-agent --format rpm   # target/rpm/cms-agent-*.rpm
#   packer init packaging/packer/al2023
#   packer build -var cms_server=cms.internal:7470 packaging/packer/al2023
#   packer build -var cms_server=cms.internal:7470 -var token_source=ssm \
#                -var ssm_parameter=/cms/prod/enroll-token packaging/packer/al2023
#
# See docs/operations.md.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "cms_server" {
  type        = string
  description = "host:port of cms-server, as instances reach it"
}

variable "agent_package" {
  type    = string
  default = "target/rpm/cms-agent-0.0.0-1.x86_64.rpm"
}

variable "token_source" {
  type        = string
  default     = "user-data"
  description = "user-data (cloud-init writes /etc/cms/enroll-token) or ssm"
  validation {
    condition     = contains(["user-data", "ssm"], var.token_source)
    error_message = "The token_source must be user-data or ssm."
  }
}

variable "ssm_parameter" {
  type    = string
  default = "/cms/enroll-token"
}

source "amazon-ebs" "al2023" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "ec2-user"
  ami_name      = "cms-agent-al2023-{{timestamp}}"
  imds_support  = "v2.0"
  source_ami_filter {
    filters = {
      # The standard image (al2023-ami-minimal-* lacks the AWS CLI).
      name                = "al2023-ami-2023.*-x86_64"
      architecture        = "x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  # The build machine itself: IMDSv2 only.
  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }
}

build {
  sources = ["source.amazon-ebs.al2023"]

  provisioner "file" {
    source      = var.agent_package
    destination = "/tmp/cms-agent.rpm"
  }

  provisioner "file" {
    source      = "${path.root}/../cms-agent-token.service"
    destination = "/tmp/cms-agent-token.service"
  }

  provisioner "shell" {
    inline = [
      "set -eu",
      # Installs the agent and enables its unit; the package starts nothing,
      # so the build machine never enrolls.
      "sudo dnf install -y /tmp/cms-agent.rpm",
      "printf 'server = \"%s\"\\ntoken_file = \"/etc/cms/enroll-token\"\\n' '${var.cms_server}' | sudo tee /etc/cms/agent.toml >/dev/null",
      # The standard image has the AWS CLI (awscli-2); installing it again is a no-op.
      "if [ '${var.token_source}' = ssm ]; then sudo dnf install -y awscli-2; sed 's#@PARAMETER@#${var.ssm_parameter}#' /tmp/cms-agent-token.service | sudo tee /etc/systemd/system/cms-agent-token.service >/dev/null; sudo systemctl enable cms-agent-token.service; fi",
      # Nothing of this machine may end up in the image: no identity, no token.
      "sudo test -z \"$(sudo ls -A /var/lib/cms/agent)\"",
      "sudo rm -f /etc/cms/enroll-token /tmp/cms-agent.rpm",
      "systemctl is-enabled cms-agent.service",
    ]
  }
}
