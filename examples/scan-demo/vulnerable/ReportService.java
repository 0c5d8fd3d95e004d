import java.io.File;
import java.nio.file.Files;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.Statement;

public class ReportService {
    private final File reportDir = new File("/srv/reports");

    public byte[] download(String fileName) throws Exception {
        File file = new File(reportDir, fileName);
        return Files.readAllBytes(file.toPath());
    }

    public ResultSet byOwner(Connection db, String owner) throws Exception {
        Statement st = db.createStatement();
        return st.executeQuery("SELECT * FROM reports WHERE owner = '" + owner + "'");
    }
}
