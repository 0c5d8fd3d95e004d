import java.io.File;
import java.nio.file.Files;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;

public class ReportService {
    private final File reportDir = new File("/srv/reports");

    public byte[] download(String fileName) throws Exception {
        File file = new File(reportDir, fileName).getCanonicalFile();
        if (!file.getPath().startsWith(reportDir.getCanonicalPath() + File.separator)) {
            throw new SecurityException("invalid file name");
        }
        return Files.readAllBytes(file.toPath());
    }

    public ResultSet byOwner(Connection db, String owner) throws Exception {
        PreparedStatement st = db.prepareStatement("SELECT * FROM reports WHERE owner = ?");
        st.setString(1, owner);
        return st.executeQuery();
    }
}
