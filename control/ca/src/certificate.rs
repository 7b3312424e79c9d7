//! Certificates the cluster CA issues: their names, the three profiles (CA,
//! serving, client), and reading back what a certificate on disk says.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::{Any, Ia5String, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::oid::db::{rfc4519, rfc5280};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName as SanExtension, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

#[cfg(test)]
mod tests;

/// DNS names the apiserver's serving certificate covers by default.
pub const DEFAULT_APISERVER_DNS_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// IP addresses the apiserver's serving certificate covers by default:
/// loopback and the `default/kubernetes` service's ClusterIPs.
pub const DEFAULT_APISERVER_IPS: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 1)),
];

/// How far back a certificate's validity starts, so a node whose clock runs
/// a little behind the issuer's accepts it at once.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A name a serving certificate is valid for (an X.509 subjectAltName).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    /// A DNS name, such as `kubernetes.default.svc`.
    Dns(String),
    /// An IP address, such as `10.96.0.1`.
    Ip(IpAddr),
}

impl SubjectAltName {
    /// Reads `name` as an IP address if it is one, else as a DNS name.
    pub fn parse(name: &str) -> Self {
        match name.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Dns(name.to_owned()),
        }
    }

    fn to_general_name(&self) -> Result<GeneralName, x509_cert::der::Error> {
        Ok(match self {
            Self::Dns(name) => GeneralName::DnsName(Ia5String::new(name)?),
            Self::Ip(ip) => GeneralName::from(*ip),
        })
    }

    fn from_general_name(name: &GeneralName) -> Option<Self> {
        match name {
            GeneralName::DnsName(dns) => Some(Self::Dns(dns.to_string())),
            GeneralName::IpAddress(octets) => match octets.as_bytes().len() {
                4 => <[u8; 4]>::try_from(octets.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(IpAddr::from(b))),
                16 => <[u8; 16]>::try_from(octets.as_bytes())
                    .ok()
                    .map(|b| Self::Ip(IpAddr::from(b))),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<IpAddr> for SubjectAltName {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

/// The names the apiserver's serving certificate covers by default
/// ([`DEFAULT_APISERVER_DNS_NAMES`] and [`DEFAULT_APISERVER_IPS`]); add the
/// node's own names and addresses to these.
pub fn default_apiserver_names() -> Vec<SubjectAltName> {
    DEFAULT_APISERVER_DNS_NAMES
        .iter()
        .map(|name| SubjectAltName::Dns((*name).to_owned()))
        .chain(
            DEFAULT_APISERVER_IPS
                .iter()
                .copied()
                .map(SubjectAltName::Ip),
        )
        .collect()
}

/// A certificate the cluster CA issued, its private key and the CA
/// certificate it chains to, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM); keep it secret.
    pub key_pem: String,
    /// The cluster CA's certificate (PEM) that signed it.
    pub ca_pem: String,
}

impl IssuedCert {
    /// The certificate followed by the CA certificate, as a TLS peer sends them.
    pub fn chain_pem(&self) -> String {
        let mut chain = self.cert_pem.clone();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        chain
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// What a certificate is for; decides its extensions.
#[derive(Clone, Debug)]
pub(crate) enum Usage {
    /// The cluster CA itself: signs certificates, nothing else.
    Ca,
    /// A TLS server valid for these names.
    Serving(Vec<SubjectAltName>),
    /// A TLS client (a user or a node).
    Client,
    /// Both ends of TLS, valid for these names: a store member, which
    /// serves its peers and connects to them with one certificate.
    Peer(Vec<SubjectAltName>),
    /// A mesh workload (an X.509-SVID): both ends of TLS, its only name a
    /// URI subjectAltName, the SPIFFE ID.
    Workload(String),
}

/// Builds a subject name: one `O=` per organization (the Kubernetes group),
/// then `CN=` (the Kubernetes user), the order Kubernetes' own tools use.
pub(crate) fn subject_name(
    common_name: &str,
    organizations: &[&str],
) -> Result<Name, x509_cert::der::Error> {
    let mut rdns = RdnSequence::default();
    for org in organizations {
        rdns.push(rdn(rfc4519::ORGANIZATION_NAME, org)?);
    }
    rdns.push(rdn(rfc4519::COMMON_NAME, common_name)?);
    // Name is RdnSequence's DER under another type; the round trip avoids
    // x509-cert's "hazmat" constructor.
    Name::from_der(&rdns.to_der()?)
}

fn rdn(
    oid: ObjectIdentifier,
    value: &str,
) -> Result<RelativeDistinguishedName, x509_cert::der::Error> {
    let value = Any::encode_from(&Utf8StringRef::new(value)?)?;
    RelativeDistinguishedName::try_from(vec![x509_cert::attr::AttributeTypeAndValue { oid, value }])
}

/// The issuer side of [`build`]: whose name goes in the certificate and
/// whose key signs it.
pub(crate) struct Signer<'a> {
    pub(crate) name: &'a Name,
    pub(crate) key: &'a SigningKey,
}

/// Builds and signs a certificate for `subject_key`, returning its PEM.
pub(crate) fn build(
    subject: Name,
    subject_key: &VerifyingKey,
    usage: Usage,
    lifetime: Duration,
    signer: Signer<'_>,
) -> Result<String, x509_cert::builder::Error> {
    let now = SystemTime::now();
    // A short-lived certificate is backdated by a fifth of its lifetime at
    // most, so that most of its validity lies ahead: a holder that renews
    // at 70-90% of it (the kubelet's rule) renews after it was issued.
    let validity = Validity::new(
        Time::try_from(now - BACKDATE.min(lifetime / 5))?,
        Time::try_from(now + lifetime)?,
    );
    let spki = SubjectPublicKeyInfoOwned::from_key(subject_key)?;
    let sans = match &usage {
        Usage::Serving(names) | Usage::Peer(names) => names
            .iter()
            .map(SubjectAltName::to_general_name)
            .collect::<Result<Vec<_>, _>>()?,
        Usage::Workload(uri) => vec![GeneralName::UniformResourceIdentifier(Ia5String::new(uri)?)],
        _ => Vec::new(),
    };
    let profile = Profile {
        subject,
        issuer: signer.name.clone(),
        usage,
        sans,
    };
    let builder = CertificateBuilder::new(profile, serial_number()?, validity, spki)?;
    let cert = builder.build::<_, DerSignature>(signer.key)?;
    Ok(cert.to_pem(LineEnding::LF)?)
}

/// A random positive 128-bit serial, unique across every issuer's certificates
/// in practice, as RFC 5280 asks.
fn serial_number() -> Result<SerialNumber, x509_cert::der::Error> {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::new(&bytes)
}

struct Profile {
    subject: Name,
    issuer: Name,
    usage: Usage,
    sans: Vec<GeneralName>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let mut exts: Vec<Extension> = Vec::new();
        let is_ca = matches!(self.usage, Usage::Ca);
        let constraints = BasicConstraints {
            ca: is_ca,
            // The CA signs leaf certificates only, never another CA.
            path_len_constraint: is_ca.then_some(0),
        };
        exts.push(constraints.to_extension(subject, &exts)?);
        let key_usage = match self.usage {
            Usage::Ca => KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature,
            Usage::Serving(_) | Usage::Client | Usage::Peer(_) | Usage::Workload(_) => {
                KeyUsages::DigitalSignature.into()
            }
        };
        exts.push(KeyUsage(key_usage).to_extension(subject, &exts)?);
        match self.usage {
            Usage::Ca => {}
            Usage::Serving(_) => {
                let eku = ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH]);
                exts.push(eku.to_extension(subject, &exts)?);
            }
            Usage::Client => {
                let eku = ExtendedKeyUsage(vec![rfc5280::ID_KP_CLIENT_AUTH]);
                exts.push(eku.to_extension(subject, &exts)?);
            }
            Usage::Peer(_) | Usage::Workload(_) => {
                let eku =
                    ExtendedKeyUsage(vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]);
                exts.push(eku.to_extension(subject, &exts)?);
            }
        }
        if !self.sans.is_empty() {
            exts.push(SanExtension(self.sans.clone()).to_extension(subject, &exts)?);
        }
        exts.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(subject, &exts)?);
        if !is_ca {
            exts.push(AuthorityKeyIdentifier::try_from(issuer_spk)?.to_extension(subject, &exts)?);
        }
        Ok(exts)
    }
}

/// What a certificate says, read back from its DER.
pub(crate) struct ParsedCert {
    cert: Certificate,
}

impl ParsedCert {
    /// Parses one PEM certificate.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, x509_cert::der::Error> {
        Ok(Self {
            cert: Certificate::from_pem(pem.trim())?,
        })
    }

    /// Parses one DER certificate.
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, x509_cert::der::Error> {
        Ok(Self {
            cert: Certificate::from_der(der)?,
        })
    }

    /// The subject's name.
    pub(crate) fn subject(&self) -> &Name {
        self.cert.tbs_certificate().subject()
    }

    /// The subject's first common name (`CN=`).
    pub(crate) fn common_name(&self) -> Option<String> {
        self.name_values(rfc4519::COMMON_NAME).into_iter().next()
    }

    /// Every organization (`O=`) in the subject, in order.
    pub(crate) fn organizations(&self) -> Vec<String> {
        self.name_values(rfc4519::ORGANIZATION_NAME)
    }

    fn name_values(&self, oid: ObjectIdentifier) -> Vec<String> {
        self.subject()
            .iter()
            .filter(|atv| atv.oid == oid)
            .filter_map(|atv| DirectoryString::try_from(&atv.value).ok())
            .map(|value| value.value().into_owned())
            .collect()
    }

    /// The DNS names and IP addresses in the subjectAltName extension.
    pub(crate) fn subject_alt_names(&self) -> Vec<SubjectAltName> {
        match self.cert.tbs_certificate().get_extension::<SanExtension>() {
            Ok(Some((_, sans))) => sans
                .0
                .iter()
                .filter_map(SubjectAltName::from_general_name)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The URIs in the subjectAltName extension (a SPIFFE ID, for a workload).
    pub(crate) fn uri_names(&self) -> Vec<String> {
        match self.cert.tbs_certificate().get_extension::<SanExtension>() {
            Ok(Some((_, sans))) => sans
                .0
                .iter()
                .filter_map(|name| match name {
                    GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the extendedKeyUsage extension lists `purpose`.
    fn has_purpose(&self, purpose: ObjectIdentifier) -> bool {
        matches!(
            self.cert.tbs_certificate().get_extension::<ExtendedKeyUsage>(),
            Ok(Some((_, eku))) if eku.0.contains(&purpose)
        )
    }

    /// Whether it may authenticate a TLS server.
    pub(crate) fn is_serving(&self) -> bool {
        self.has_purpose(rfc5280::ID_KP_SERVER_AUTH)
    }

    /// Whether it may authenticate a TLS client.
    pub(crate) fn is_client(&self) -> bool {
        self.has_purpose(rfc5280::ID_KP_CLIENT_AUTH)
    }

    /// Start of the validity period.
    pub(crate) fn not_before(&self) -> SystemTime {
        self.cert
            .tbs_certificate()
            .validity()
            .not_before
            .to_system_time()
    }

    /// End of the validity period.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.cert
            .tbs_certificate()
            .validity()
            .not_after
            .to_system_time()
    }

    /// The subject public key, as SubjectPublicKeyInfo DER.
    pub(crate) fn public_key_der(&self) -> Result<Vec<u8>, x509_cert::der::Error> {
        self.cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
    }

    /// Whether `issuer` signed this certificate (and named itself as issuer).
    pub(crate) fn is_signed_by(&self, issuer_name: &Name, issuer: &VerifyingKey) -> bool {
        let tbs = self.cert.tbs_certificate();
        if tbs.issuer() != issuer_name {
            return false;
        }
        let Ok(tbs_der) = tbs.to_der() else {
            return false;
        };
        let Some(sig_der) = self.cert.signature().as_bytes() else {
            return false;
        };
        let Ok(sig) = Signature::from_der(sig_der) else {
            return false;
        };
        issuer.verify(&tbs_der, &sig).is_ok()
    }

    /// Whether, at `now`, more than half of its lifetime is still ahead, the
    /// point past which shoal renews a certificate.
    pub(crate) fn has_half_life_left(&self, now: SystemTime) -> bool {
        let (start, end) = (self.not_before(), self.not_after());
        let (Ok(lifetime), Ok(left)) = (end.duration_since(start), end.duration_since(now)) else {
            return false;
        };
        now >= start && left > lifetime / 2
    }
}

/// The SubjectPublicKeyInfo DER of a key, for comparing with a certificate's.
pub(crate) fn public_key_der(key: &VerifyingKey) -> Result<Vec<u8>, x509_cert::spki::Error> {
    Ok(SubjectPublicKeyInfoOwned::from_key(key)?.to_der()?)
}
